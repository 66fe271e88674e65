//! Products and their stock. Stock changes go through the participants' concurrency
//! strategy (see `crate::adjuster`), so an operator's adjustment never races a saga's
//! reservation.

use crate::guarded;
use crate::schema::products;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};

use super::counters::{self, Change};
use engine::api::State;
use engine::api::idempotency;
use engine::api::problem::{ApiError, ApiResult};
use engine::auth::Caller;

pub struct ProductsApi;

/// A new product.
#[derive(Debug, Object)]
#[oai(example)]
struct NewProduct {
    /// Stock keeping unit: letters, digits, `-` and `_`.
    #[oai(validator(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    sku: String,
    #[oai(validator(min_length = 1, max_length = 200))]
    name: String,
    /// Unit price in cents.
    #[oai(validator(minimum(value = "0"), maximum(value = "100000000")))]
    price_cents: i64,
    /// Units in stock.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000")))]
    stock: i32,
}

impl poem_openapi::types::Example for NewProduct {
    fn example() -> Self {
        Self {
            sku: "MUG-01".into(),
            name: "Enamel mug".into(),
            price_cents: 1_500,
            stock: 100,
        }
    }
}

/// A product with its current stock.
#[derive(Debug, Object, Queryable, Selectable, Serialize, Deserialize)]
#[diesel(table_name = products)]
pub struct Product {
    sku: String,
    name: String,
    price_cents: i64,
    stock: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A relative stock change.
#[derive(Debug, Object, Serialize)]
#[oai(example)]
struct StockChange {
    /// Units to add (positive) or remove (negative); stock never goes below zero.
    #[oai(validator(minimum(value = "-1000000"), maximum(value = "1000000")))]
    delta: i32,
}

impl poem_openapi::types::Example for StockChange {
    fn example() -> Self {
        Self { delta: 25 }
    }
}

#[derive(ApiResponse)]
enum Adjusted {
    /// The product after the change.
    #[oai(status = 200)]
    Ok(
        Json<Product>,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
}

#[derive(ApiResponse)]
enum Created {
    /// The product was created.
    #[oai(status = 201)]
    Created(Json<Product>),
}

#[derive(ApiResponse)]
enum Found {
    #[oai(status = 200)]
    Ok(Json<Product>),
}

pub async fn find(state: &State, sku: &str) -> ApiResult<Product> {
    let mut conn = state.database.get().await?;
    products::table
        .find(sku)
        .select(Product::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("product", sku))
}

#[OpenApi(tag = "crate::api::Tag::Products")]
impl ProductsApi {
    /// Create a product
    ///
    /// Adds a product with its price and initial stock. 409 when the SKU exists.
    #[oai(path = "/v1/products", method = "post")]
    async fn create(&self, state: Data<&State>, body: Json<NewProduct>) -> ApiResult<Created> {
        let mut conn = state.database.get().await?;
        let inserted = diesel::insert_into(products::table)
            .values((
                products::sku.eq(&body.sku),
                products::name.eq(&body.name),
                products::price_cents.eq(body.price_cents),
                products::stock.eq(body.stock),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
        if inserted == 0 {
            return Err(ApiError::conflict(format!(
                "product {} already exists",
                body.sku
            )));
        }
        drop(conn);
        Ok(Created::Created(Json(find(&state, &body.sku).await?)))
    }

    /// Get a product
    ///
    /// The product with its current stock.
    #[oai(path = "/v1/products/:sku", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_sku")] sku: Path<String>,
    ) -> ApiResult<Found> {
        Ok(Found::Ok(Json(find(&state, &sku).await?)))
    }

    /// Adjust stock
    ///
    /// Adds or removes units under the same lock the sagas use. 409 when the change would
    /// take the stock below zero.
    #[oai(path = "/v1/products/:sku/stock", method = "post")]
    async fn adjust_stock(
        &self,
        state: Data<&State>,
        shop: Data<&super::Shop>,
        #[oai(example = "crate::api::example_sku")] sku: Path<String>,
        body: Json<StockChange>,
        /// Makes retries safe: the same key always answers with the same change.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Adjusted> {
        let path = format!("/v1/products/{}/stock", sku.0);
        let key =
            idempotency::Key::of(&caller, idempotency_key.0.as_deref(), "POST", &path, &*body)?;
        let change = Change {
            counter: guarded::STOCK,
            resource: &format!("sku:{}", sku.0),
            row: &sku.0,
            delta: i64::from(body.delta),
        };
        let (sku, delta) = (sku.0.clone(), body.delta);
        let (product, replayed) = counters::adjust(&state, &shop, key, change, |conn, adjusted| {
            Box::pin(async move {
                match adjusted {
                    guarded::Adjusted::Done { .. } => Ok(products::table
                        .find(&sku)
                        .select(Product::as_select())
                        .first(conn)
                        .await?),
                    guarded::Adjusted::Missing => Err(ApiError::not_found("product", &sku)),
                    guarded::Adjusted::OutOfBounds { current, limit } => {
                        let past = match limit {
                            Some(max) if delta > 0 => format!("past its maximum of {max}"),
                            _ => "below zero".to_owned(),
                        };
                        Err(ApiError::conflict(format!(
                            "stock is {current}; a change of {delta} would take it {past}"
                        )))
                    }
                }
            })
        })
        .await?;
        Ok(Adjusted::Ok(Json(product), replayed.then_some(true)))
    }
}
