//! Step fences: the participant side of the saga's fence rule.
//!
//! One `step_fences` row per (saga, step) orders a step's forward command against its fence
//! or compensation. Both write that row inside the command's transaction, so Postgres
//! serialises them (the second waits on the first's row lock or unique-index entry):
//! - forward: marks `applied_at`, but only while the step is not fenced; otherwise the
//!   command is refused, so a late original can never take effect after the saga moved on;
//! - fence and compensation: set `fenced_at` and learn whether the original took effect.

use diesel::sql_types::{Array, Bool, Int4, Jsonb, Nullable, Uuid as SqlUuid};
use diesel::{OptionalExtension as _, QueryableByName};
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Fenced};
use platform::db::{Connection, prepared};
use serde_json::Value;

use crate::participant::Failure;

/// The step number as stored; a number no definition can have is a rejection, not an
/// infrastructure error to retry.
fn step_of(command: &Command) -> Result<i32, Failure> {
    i32::try_from(command.step)
        .map_err(|_| Failure::rejected(format!("step {} is out of range", command.step)))
}

/// Records that the forward command of its step takes effect in this transaction; refused
/// when the step was fenced or compensated first.
pub async fn claim_forward(conn: &mut Connection, command: &Command) -> Result<(), Failure> {
    let claimed = prepared(
        "INSERT INTO step_fences (saga_id, step, applied_at) VALUES ($1, $2, now()) \
         ON CONFLICT (saga_id, step) DO UPDATE SET applied_at = excluded.applied_at \
         WHERE step_fences.fenced_at IS NULL",
    )
    .bind::<SqlUuid, _>(command.saga_id)
    .bind::<Int4, _>(step_of(command)?)
    .execute(conn)
    .await?;
    if claimed == 0 {
        return Err(Failure::rejected(
            "step fenced: the saga has compensated past it",
        ));
    }
    Ok(())
}

/// [`claim_forward`] for a set of forward commands, one statement for all: `false` when a
/// step of the set was fenced first, and the caller must undo the set's changes.
pub async fn claim_forwards(conn: &mut Connection, commands: &[&Command]) -> Result<bool, Failure> {
    // In key order, so that two sets racing on the same steps never deadlock.
    let mut steps = Vec::with_capacity(commands.len());
    for command in commands {
        steps.push((command.saga_id, step_of(command)?));
    }
    steps.sort_unstable();
    let (sagas, steps): (Vec<_>, Vec<_>) = steps.into_iter().unzip();
    let claimed = prepared(
        "INSERT INTO step_fences (saga_id, step, applied_at) \
         SELECT saga_id, step, now() FROM unnest($1::uuid[], $2::int4[]) AS s(saga_id, step) \
         ON CONFLICT (saga_id, step) DO UPDATE SET applied_at = excluded.applied_at \
         WHERE step_fences.fenced_at IS NULL",
    )
    .bind::<Array<SqlUuid>, _>(&sagas)
    .bind::<Array<Int4>, _>(&steps)
    .execute(conn)
    .await?;
    Ok(claimed == sagas.len())
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Bool)]
    applied: bool,
}

#[derive(QueryableByName)]
struct ForwardOutput {
    #[diesel(sql_type = Nullable<Jsonb>)]
    output: Option<Value>,
}

/// Fences the command's step (idempotent) and reports whether its forward command took
/// effect before, with that command's output.
pub async fn fence(conn: &mut Connection, command: &Command) -> Result<Fenced, Failure> {
    let step = step_of(command)?;
    let Applied { applied } = prepared(
        "INSERT INTO step_fences (saga_id, step, fenced_at) VALUES ($1, $2, now()) \
         ON CONFLICT (saga_id, step) \
         DO UPDATE SET fenced_at = COALESCE(step_fences.fenced_at, excluded.fenced_at) \
         RETURNING applied_at IS NOT NULL AS applied",
    )
    .bind::<SqlUuid, _>(command.saga_id)
    .bind::<Int4, _>(step)
    .get_result(conn)
    .await?;
    if !applied {
        return Ok(Fenced {
            applied: false,
            output: None,
        });
    }
    // The forward reply was stored in the same transaction that set `applied_at`.
    let output = prepared(
        "SELECT reply -> 'outcome' -> 'output' AS output FROM processed_commands \
         WHERE saga_id = $1 AND reply ->> 'direction' = 'forward' \
           AND reply ->> 'step' = $2::text AND reply -> 'outcome' ->> 'status' = 'succeeded' \
         LIMIT 1",
    )
    .bind::<SqlUuid, _>(command.saga_id)
    .bind::<Int4, _>(step)
    .get_result::<ForwardOutput>(conn)
    .await
    .optional()?
    .and_then(|row| row.output);
    Ok(Fenced {
        applied: true,
        output,
    })
}
