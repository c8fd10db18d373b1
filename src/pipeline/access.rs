//! The access step: may the caller use the model it asked for.
//!
//! Reads: `ctx.key` (authenticated at the edge) and its team, the call's model. Fails with
//! 403 `model_not_allowed` for a model the key or its team may not use.

use super::GatewayRequest;
use super::step::StepLayer;
use crate::error::GatewayError;

pub fn layer() -> StepLayer {
    StepLayer::new("access", check)
}

fn check(request: &mut GatewayRequest) -> Result<(), GatewayError> {
    let model = request.call.model();
    if request.ctx.key.allows(model) {
        Ok(())
    } else {
        let model = model.to_owned();
        Err(GatewayError::ModelNotAllowed { model })
    }
}
