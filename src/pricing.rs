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
pub struct Rates {
    pub input: f64,
    pub cached_input: f64,
    pub cache_write: f64,
    pub output: f64,
}

/// A model's prices: its rates, and other rates for prompts over a length where the
/// provider charges more for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub base: Rates,
    pub long_context: Option<(u64, Rates)>,
}

impl From<&PriceConfig> for Price {
    fn from(config: &PriceConfig) -> Self {
        let rates = |input: f64, cached: Option<f64>, write: Option<f64>, output: f64| Rates {
            input,
            cached_input: cached.unwrap_or(input),
            cache_write: write.unwrap_or(input),
            output,
        };
        Self {
            base: rates(
                config.input,
                config.cached_input,
                config.cache_write,
                config.output,
            ),
            long_context: config.long_context.as_ref().map(|long| {
                let rates = rates(long.input, long.cached_input, long.cache_write, long.output);
                (long.above_tokens, rates)
            }),
        }
    }
}

impl Price {
    /// What a model that costs nothing costs (the mock's).
    pub const FREE: Self = Self {
        base: Rates {
            input: 0.0,
            cached_input: 0.0,
            cache_write: 0.0,
            output: 0.0,
        },
        long_context: None,
    };

    /// The rates for a request of `prompt_tokens`.
    fn rates(&self, prompt_tokens: u64) -> &Rates {
        match &self.long_context {
            Some((above, rates)) if prompt_tokens > *above => rates,
            _ => &self.base,
        }
    }

    /// The cost of a request's usage.
    pub fn cost(&self, usage: &Usage) -> Cost {
        let rates = self.rates(usage.prompt_tokens);
        let details = usage.prompt_tokens_details.unwrap_or_default();
        let cached = details.cached_tokens.min(usage.prompt_tokens);
        let written = details
            .cache_creation_tokens
            .unwrap_or(0)
            .min(usage.prompt_tokens - cached);
        let fresh = usage.prompt_tokens - cached - written;
        let micro_usd = fresh as f64 * rates.input
            + cached as f64 * rates.cached_input
            + written as f64 * rates.cache_write
            + usage.completion_tokens as f64 * rates.output;
        Cost {
            usd: micro_usd / 1_000_000.0,
            source: usage.source,
        }
    }

    /// The most a request may cost: every prompt token at the input price, every allowed
    /// completion token at the output price.
    pub fn ceiling(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        let rates = self.rates(prompt_tokens);
        (prompt_tokens as f64 * rates.input.max(rates.cache_write)
            + completion_tokens as f64 * rates.output)
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
        assert_eq!(table.price("gpt-4o-mini").unwrap().base.input, 0.15);
        assert_eq!(table.price("gpt-4o-2024-08-06").unwrap().base.input, 2.50);
        assert_eq!(
            table.price("gpt-4o-mini-2024-07-18").unwrap().base.input,
            0.15
        );
        assert_eq!(
            table
                .price("claude-sonnet-4-5-20250929")
                .unwrap()
                .base
                .output,
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
            long_context: None,
        };
        overrides.insert("gpt-4o".to_owned(), price);
        let table = PriceTable::build(&overrides).unwrap();
        assert_eq!(table.price("gpt-4o").unwrap().base.output, 2.0);
    }

    #[test]
    fn cached_and_written_tokens_have_their_own_price() {
        let price = Price {
            base: Rates {
                input: 3.0,
                cached_input: 0.3,
                cache_write: 3.75,
                output: 15.0,
            },
            long_context: None,
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

    #[test]
    fn a_long_prompt_is_priced_at_the_long_context_rates() {
        let table = PriceTable::build(&IndexMap::new()).unwrap();
        let price = table.price("gemini-2.5-pro").unwrap();
        let at = |prompt| {
            price
                .cost(&Usage::new(prompt, 1_000_000, UsageSource::Provider))
                .usd
        };
        // 200k × 1.25 + 1M × 10, then 200,001 × 2.50 + 1M × 15.
        assert!((at(200_000) - 10.25).abs() < 1e-9, "{}", at(200_000));
        assert!((at(200_001) - 15.5000025).abs() < 1e-9, "{}", at(200_001));
    }
}
