//! The operator station served at `/`.

use std::sync::Arc;

use axum::Router;

#[derive(Debug)]
pub struct Web {}

pub fn router(_web: Arc<Web>) -> Router {
    Router::new()
}
