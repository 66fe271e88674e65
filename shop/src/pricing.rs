//! What lines cost, from the products table: the one place a price is computed, by the order
//! front (the total it shows and stores in `orders`) and by the payment role (what it
//! charges a saga no front priced). Never from an amount a caller sent.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::db::Connection;

use crate::inputs::OrderLine;
use crate::schema::products;

/// Why lines have no price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpriced {
    /// Line `index` names a product that does not exist.
    UnknownProduct { index: usize, sku: String },
    /// The total does not fit a 64-bit amount of cents.
    OutOfRange,
}

impl std::fmt::Display for Unpriced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unpriced::UnknownProduct { sku, .. } => write!(f, "product {sku} does not exist"),
            Unpriced::OutOfRange => f.write_str("the order total is out of range"),
        }
    }
}

/// The lines at the products' prices now.
pub async fn total(
    conn: &mut Connection,
    lines: &[OrderLine],
) -> QueryResult<Result<i64, Unpriced>> {
    let skus: Vec<&str> = lines.iter().map(|line| line.sku.as_str()).collect();
    let prices: HashMap<String, i64> = products::table
        .filter(products::sku.eq_any(&skus))
        .select((products::sku, products::price_cents))
        .load::<(String, i64)>(conn)
        .await?
        .into_iter()
        .collect();
    let mut total = 0i64;
    for (index, line) in lines.iter().enumerate() {
        let Some(price) = prices.get(&line.sku) else {
            return Ok(Err(Unpriced::UnknownProduct {
                index,
                sku: line.sku.clone(),
            }));
        };
        let Some(sum) = price
            .checked_mul(i64::from(line.quantity))
            .and_then(|cost| total.checked_add(cost))
        else {
            return Ok(Err(Unpriced::OutOfRange));
        };
        total = sum;
    }
    Ok(Ok(total))
}
