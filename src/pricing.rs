//! What a request costs: list prices per million tokens (`config/pricing.yaml`, embedded,
//! with the main config's `pricing.models` on top), looked up by the upstream model name.
//! A cost carries its source like the usage it comes from: provider-reported or estimated.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::schema::PriceConfig;
use crate::usage::{Usage, UsageSource};

/// The shipped price list.
pub const EMBEDDED: &str = include_str!("../config/pricing.yaml");

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub cache_write: f64,
    pub output: f64,
}

impl From<&PriceConfig> for Price {
    fn from(config: &PriceConfig) -> Self {
        Self {
            input: config.input,
            cached_input: config.cached_input.unwrap_or(config.input),
            cache_write: config.cache_write.unwrap_or(config.input),
            output: config.output,
        }
    }
}

impl Price {
    /// What a model that costs nothing costs (the mock's).
    pub const FREE: Self = Self {
        input: 0.0,
        cached_input: 0.0,
        cache_write: 0.0,
        output: 0.0,
    };

    /// The cost of a request's usage.
    pub fn cost(&self, usage: &Usage) -> Cost {
        let details = usage.prompt_tokens_details.unwrap_or_default();
        let cached = details.cached_tokens.min(usage.prompt_tokens);
        let written = details
            .cache_creation_tokens
            .unwrap_or(0)
            .min(usage.prompt_tokens - cached);
        let fresh = usage.prompt_tokens - cached - written;
        let micro_usd = fresh as f64 * self.input
            + cached as f64 * self.cached_input
            + written as f64 * self.cache_write
            + usage.completion_tokens as f64 * self.output;
        Cost {
            usd: micro_usd / 1_000_000.0,
            source: usage.source,
        }
    }

    /// The most a request may cost: every prompt token at the input price, every allowed
    /// completion token at the output price.
    pub fn ceiling(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input.max(self.cache_write)
            + completion_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub usd: f64,
    pub source: UsageSource,
}

impl Cost {
    /// The cost's value and source as the cost headers and the usage extension give them:
    /// `unknown` and `unpriced` without a price.
    pub fn describe(cost: Option<Self>) -> (String, &'static str) {
        match cost {
            Some(cost) => (cost.usd.to_string(), cost.source.as_str()),
            None => ("unknown".to_owned(), "unpriced"),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
    /// Names longest first, for prefix lookups.
    by_length: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    models: IndexMap<String, PriceConfig>,
}

impl PriceTable {
    /// The shipped prices with `overrides` on top.
    pub fn build(overrides: &IndexMap<String, PriceConfig>) -> Result<Self, String> {
        let shipped: PricingFile = serde_saphyr::from_str(EMBEDDED)
            .map_err(|e| format!("the embedded price list is invalid: {e}"))?;
        let prices: HashMap<String, Price> = shipped
            .models
            .iter()
            .chain(overrides)
            .map(|(model, price)| (model.clone(), Price::from(price)))
            .collect();
        let mut by_length: Vec<String> = prices.keys().cloned().collect();
        by_length.sort_by_key(|name| std::cmp::Reverse(name.len()));
        Ok(Self { prices, by_length })
    }

    /// The price of `model`: exact, else the longest listed name that starts it.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        let name = self
            .by_length
            .iter()
            .find(|name| model.starts_with(name.as_str()))?;
        self.prices.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_found_exactly_or_by_prefix() {
        let table = PriceTable::build(&IndexMap::new()).unwrap();
        assert_eq!(table.price("gpt-4o-mini").unwrap().input, 0.15);
        assert_eq!(table.price("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(table.price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(
            table.price("claude-sonnet-4-5-20250929").unwrap().output,
            15.00
        );
        assert!(table.price("mock").is_none());
    }

    #[test]
    fn overrides_win() {
        let mut overrides = IndexMap::new();
        let price = PriceConfig {
            input: 1.0,
            cached_input: None,
            cache_write: None,
            output: 2.0,
        };
        overrides.insert("gpt-4o".to_owned(), price);
        let table = PriceTable::build(&overrides).unwrap();
        assert_eq!(table.price("gpt-4o").unwrap().output, 2.0);
    }

    #[test]
    fn cached_and_written_tokens_have_their_own_price() {
        let price = Price {
            input: 3.0,
            cached_input: 0.3,
            cache_write: 3.75,
            output: 15.0,
        };
        let mut usage = Usage::new(1_000_000, 100_000, UsageSource::Provider);
        usage.prompt_tokens_details = Some(crate::usage::PromptTokensDetails {
            cached_tokens: 500_000,
            cache_creation_tokens: Some(100_000),
        });
        // 400k fresh × 3 + 500k cached × 0.3 + 100k written × 3.75 + 100k out × 15
        let cost = price.cost(&usage);
        assert!(
            (cost.usd - (1.2 + 0.15 + 0.375 + 1.5)).abs() < 1e-9,
            "{cost:?}"
        );
    }
}
