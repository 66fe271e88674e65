//! SQL text that each connection prepares once and then only executes.
//!
//! diesel caches a connection's prepared statements, but not for `sql_query`, an `UPDATE`,
//! or an `INSERT` of several rows: their text may vary, so diesel sends them unnamed and
//! Postgres parses, analyses and plans them at every execution. For the engine's and the
//! workers' batch statements that was about a tenth of Postgres's CPU. A [`Prepared`]
//! statement is fixed text whose binds are values or arrays (`unnest($1::uuid[], ...)` for
//! many rows), so its text is the same whatever the batch's size: diesel keeps it in the
//! connection's statement cache, keyed by the text and the bind types, and Postgres reuses
//! its plan.
//!
//! ```ignore
//! prepared("UPDATE t SET n = n + 1 WHERE id = ANY($1)")
//!     .bind::<Array<Uuid>, _>(&ids)
//!     .execute(&mut conn)
//!     .await?;
//! ```

use std::borrow::Cow;
use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// Fixed SQL text and its binds, `$1`, `$2`... in the order they were bound.
#[derive(Debug, Clone)]
#[must_use = "a statement runs only when executed or loaded"]
pub struct Prepared<B = ()> {
    sql: Cow<'static, str>,
    binds: B,
}

/// `sql`, prepared once per connection. Its text must not depend on the data: bind every
/// value, as an array for many rows. Text built from the code's own names (a table, a
/// column) is fine: each text is one statement in the cache.
pub fn prepared(sql: impl Into<Cow<'static, str>>) -> Prepared {
    Prepared {
        sql: sql.into(),
        binds: (),
    }
}

impl<B> Prepared<B> {
    /// Binds the next parameter (`$1`, then `$2`, ...), of SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Prepared<Bound<B, V, ST>> {
        Prepared {
            sql: self.sql,
            binds: Bound {
                earlier: self.binds,
                value,
                sql_type: PhantomData,
            },
        }
    }
}

/// The binds so far, and one more.
#[derive(Debug, Clone, Copy)]
pub struct Bound<Earlier, V, ST> {
    earlier: Earlier,
    value: V,
    sql_type: PhantomData<ST>,
}

/// The binds of a statement, each found by its number.
pub trait Binds {
    /// How many there are.
    const COUNT: usize;
    /// Pushes bind `number` (from 1).
    fn push<'b>(&'b self, number: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    const COUNT: usize = 0;

    fn push<'b>(&'b self, number: usize, _: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(unbound(number))
    }
}

impl<Earlier, V, ST> Binds for Bound<Earlier, V, ST>
where
    Earlier: Binds,
    V: ToSql<ST, Pg>,
    Pg: HasSqlType<ST>,
{
    const COUNT: usize = Earlier::COUNT + 1;

    fn push<'b>(&'b self, number: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if number == Self::COUNT {
            out.push_bind_param::<ST, V>(&self.value)
        } else {
            self.earlier.push(number, out)
        }
    }
}

/// The next placeholder in `text`: the text before it, its number, the text after it.
fn next_placeholder(text: &str) -> Option<(&str, usize, &str)> {
    let mut from = 0;
    while let Some(at) = text[from..].find('$').map(|at| from + at) {
        let end = text[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(text.len(), |end| at + 1 + end);
        if let Ok(number) = text[at + 1..end].parse() {
            return Some((&text[..at], number, &text[end..]));
        }
        from = at + 1; // a `$` that starts no placeholder
    }
    None
}

fn unbound(number: usize) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("prepared statement: `${number}` has no bind").into(),
    )
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    // Unlike diesel's `SqlQuery`, it does not mark itself unsafe to cache: its text is fixed.
    //
    // diesel numbers placeholders in the order its binds are pushed, so each bind is pushed
    // where its placeholder first appears in the text (its number written anew: the text
    // may use `$2` before `$1`), and a placeholder used again is given that same number.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut pushed: Vec<usize> = Vec::with_capacity(B::COUNT);
        let mut rest: &str = &self.sql;
        while let Some((before, number, after)) = next_placeholder(rest) {
            out.push_sql(before);
            match pushed.iter().position(|&earlier| earlier == number) {
                Some(at) => out.push_sql(&format!("${}", at + 1)),
                None if (1..=B::COUNT).contains(&number) => {
                    pushed.push(number);
                    self.binds.push(number, &mut out)?;
                }
                None => return Err(unbound(number)),
            }
            rest = after;
        }
        out.push_sql(rest);
        if pushed.len() != B::COUNT {
            return Err(diesel::result::Error::QueryBuilderError(
                format!(
                    "prepared statement: {} binds, {} placeholders",
                    B::COUNT,
                    pushed.len()
                )
                .into(),
            ));
        }
        Ok(())
    }
}

/// No id from the type: two statements with the same binds differ by their text, which
/// is what the cache is keyed by.
impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// Rows come back by name, as from `sql_query` (`QueryableByName`).
impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_whole_and_a_lone_dollar_is_passed_over() {
        assert_eq!(
            next_placeholder("SELECT $1, $10"),
            Some(("SELECT ", 1, ", $10"))
        );
        assert_eq!(
            next_placeholder(", $10 WHERE x"),
            Some((", ", 10, " WHERE x"))
        );
        assert_eq!(
            next_placeholder("SELECT '$' || $2"),
            Some(("SELECT '$' || ", 2, ""))
        );
        assert_eq!(next_placeholder("SELECT 1"), None);
    }
}
