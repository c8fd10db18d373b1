//! The route step: resolves the public model the client named to its configured targets.
//!
//! Reads: the call's `model`, the snapshot's model table. Writes: `ctx.route`, and the model
//! on the request record. Fails with 404 `model_not_found` for a model that is not
//! configured, 503 when none of its providers is usable (for example, a missing key) and
//! it has no fallbacks.

use super::GatewayRequest;
use super::step::StepLayer;
use crate::error::GatewayError;

pub fn layer() -> StepLayer {
    StepLayer::new("route", resolve)
}

fn resolve(request: &mut GatewayRequest) -> Result<(), GatewayError> {
    let model = request.call.model();
    let Some(route) = request.ctx.snapshot.models.get(model).cloned() else {
        let model = model.to_owned();
        return Err(GatewayError::ModelNotFound { model });
    };
    request.ctx.record.set_model(route.name.clone());
    // A model with fallbacks goes on to them (the resilience layer's job).
    if let Some(reason) = route
        .unusable_reason()
        .filter(|_| route.fallbacks.is_empty())
    {
        let model = route.name.to_string();
        return Err(GatewayError::NoUsableTarget { model, reason });
    }
    request.ctx.route = Some(route);
    Ok(())
}
