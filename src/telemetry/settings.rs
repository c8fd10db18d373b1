//! What trace export does, from the config file's `telemetry.traces` and the standard
//! `OTEL_*` environment variables.
//!
//! Precedence, key by key: a key written in the config file wins; a key it leaves out
//! comes from the environment; then the default. So `OTEL_TRACES_EXPORTER=otlp` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` turn export on with the shipped config, while a file that
//! says `exporter: none` keeps it off whatever the environment says (as the OpenTelemetry
//! SDKs let code override the environment). `OTEL_SDK_DISABLED=true` turns it off always.

use std::time::Duration;

use crate::config::schema::{OtlpProtocol, TraceBatchConfig, TraceExporter, TracesConfig};
use crate::config::secret::Secret;

/// Trace export as it will run.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// Where spans go: the full URL (`…/v1/traces` for http/protobuf).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, Secret)>,
    pub sampling_ratio: f64,
    pub service_name: String,
    pub resource_attributes: Vec<(String, String)>,
    /// Most bytes of prompt or completion text on a span, when content is captured.
    pub content_max_bytes: Option<usize>,
    pub timeout: Duration,
    pub batch: TraceBatchConfig,
}

/// Reads an environment variable (`std::env::var` outside tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The export settings, or `None` when traces are off. An environment variable with a
/// value the gateway cannot use is an error naming it.
pub fn resolve(config: &TracesConfig, env: Env<'_>) -> Result<Option<TraceSettings>, String> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let exporter = match (config.exporter, env("OTEL_TRACES_EXPORTER")) {
        (Some(exporter), _) => exporter,
        (None, Some(name)) => match name.trim() {
            "otlp" => TraceExporter::Otlp,
            "none" => TraceExporter::None,
            other => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: expected otlp or none"
                ));
            }
        },
        (None, None) => TraceExporter::None,
    };
    if exporter == TraceExporter::None {
        return Ok(None);
    }
    let protocol = match config.protocol {
        Some(protocol) => protocol,
        None => protocol_from_env(&env)?,
    };
    let base = |base: &str| match protocol {
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        OtlpProtocol::Grpc => base.to_owned(),
    };
    let endpoint = match (&config.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (Some(endpoint), _) => base(endpoint),
        (None, Some(endpoint)) => endpoint,
        (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(endpoint) => base(&endpoint),
            None => base(match protocol {
                OtlpProtocol::HttpProtobuf => "http://localhost:4318",
                OtlpProtocol::Grpc => "http://localhost:4317",
            }),
        },
    };
    let mut headers = Vec::new();
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        for (key, value) in pairs(name, env(name).as_deref())? {
            upsert(&mut headers, key, Secret::new(value));
        }
    }
    for (key, value) in &config.headers {
        upsert(&mut headers, key.clone(), value.clone());
    }
    let sampling_ratio = match (config.sampling_ratio, env("OTEL_TRACES_SAMPLER_ARG")) {
        (Some(ratio), _) => ratio,
        (None, Some(arg)) => arg
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!("OTEL_TRACES_SAMPLER_ARG={arg}: expected a ratio from 0 to 1")
            })?,
        (None, None) => 1.0,
    };
    let resource = env("OTEL_RESOURCE_ATTRIBUTES");
    let mut resource_attributes = pairs("OTEL_RESOURCE_ATTRIBUTES", resource.as_deref())?;
    for (key, value) in &config.resource_attributes {
        upsert(&mut resource_attributes, key.clone(), value.clone());
    }
    let from_resource = resource_attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    let service_name = config
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .or(from_resource)
        .unwrap_or_else(|| "switchyard".to_owned());
    resource_attributes.retain(|(k, _)| k != "service.name");
    let timeout = match config.timeout {
        Some(timeout) => timeout,
        None => timeout_from_env(&env)?,
    };
    Ok(Some(TraceSettings {
        endpoint,
        protocol,
        headers,
        sampling_ratio,
        service_name,
        resource_attributes,
        content_max_bytes: config
            .capture_content
            .then(|| usize::try_from(config.content_max_bytes.as_u64()).unwrap_or(usize::MAX)),
        timeout,
        batch: config.batch,
    }))
}

fn protocol_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<OtlpProtocol, String> {
    let names = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ];
    let Some((name, value)) = names.iter().find_map(|n| env(n).map(|v| (n, v))) else {
        return Ok(OtlpProtocol::HttpProtobuf);
    };
    match value.trim() {
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "grpc" => Ok(OtlpProtocol::Grpc),
        other => Err(format!("{name}={other}: expected http/protobuf or grpc")),
    }
}

fn timeout_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Duration, String> {
    let names = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ];
    let Some((name, value)) = names.iter().find_map(|n| env(n).map(|v| (n, v))) else {
        return Ok(Duration::from_secs(10));
    };
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(format!("{name}={value}: expected milliseconds")),
    }
}

fn upsert<V>(list: &mut Vec<(String, V)>, key: String, value: V) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key, value)),
    }
}

/// `key=value,key2=value2` (W3C baggage style, values percent-encoded), as the
/// `OTEL_*_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` variables write them. The error names
/// the variable, never its value (headers carry credentials).
fn pairs(name: &str, value: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| format!("{name}: expected key=value pairs separated by commas"))?;
            let value = percent_decode(value.trim())
                .ok_or_else(|| format!("{name}: a value is not valid percent-encoding"))?;
            Ok((key.trim().to_owned(), value))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolved(yaml: &str, vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, String> {
        let config: TracesConfig = serde_saphyr::from_str(yaml).unwrap();
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(&config, &|name| vars.get(name).cloned())
    }

    #[test]
    fn off_unless_the_file_or_the_environment_turns_it_on() {
        assert!(resolved("{}", &[]).unwrap().is_none());
        let vars = [
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ];
        let on = resolved("{}", &vars).unwrap().unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(on.protocol, OtlpProtocol::HttpProtobuf);
        assert!(resolved("{exporter: none}", &vars).unwrap().is_none());
        let disabled = [vars[0], vars[1], ("OTEL_SDK_DISABLED", "true")];
        assert!(resolved("{exporter: otlp}", &disabled).unwrap().is_none());
    }

    #[test]
    fn the_file_wins_key_by_key_and_the_environment_fills_the_rest() {
        let vars = [
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-team=a%20b,authorization=Bearer env",
            ),
            ("OTEL_SERVICE_NAME", "from-env"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=x",
            ),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let yaml = "{endpoint: 'http://file:4317', headers: {authorization: Bearer file}, resource_attributes: {region: eu}}";
        let s = resolved(yaml, &vars).unwrap().unwrap();
        assert_eq!(
            (s.protocol, s.endpoint.as_str()),
            (OtlpProtocol::Grpc, "http://file:4317")
        );
        let headers: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            headers,
            [("x-team", "a b"), ("authorization", "Bearer file")]
        );
        assert_eq!(s.service_name, "from-env");
        assert_eq!(
            s.resource_attributes,
            [
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("region".to_owned(), "eu".to_owned())
            ]
        );
        assert!((s.sampling_ratio - 0.25).abs() < f64::EPSILON);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.content_max_bytes, None);
    }

    #[test]
    fn a_signal_specific_endpoint_is_used_as_it_is() {
        let vars = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")];
        let s = resolved("{exporter: otlp}", &vars).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://c:4318/custom");
        let s = resolved("{exporter: otlp, protocol: grpc}", &[])
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://localhost:4317");
    }

    #[test]
    fn unusable_environment_values_are_errors_that_do_not_print_header_values() {
        for (yaml, name, value) in [
            ("{}", "OTEL_TRACES_EXPORTER", "zipkin"),
            (
                "{exporter: otlp}",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "http/json",
            ),
            ("{exporter: otlp}", "OTEL_TRACES_SAMPLER_ARG", "2"),
            (
                "{exporter: otlp}",
                "OTEL_EXPORTER_OTLP_HEADERS",
                "sk-secret-no-equals",
            ),
        ] {
            let error = resolved(yaml, &[(name, value)]).unwrap_err();
            assert!(error.starts_with(name), "{error}");
        }
        let error = resolved(
            "{exporter: otlp}",
            &[("OTEL_EXPORTER_OTLP_HEADERS", "k=sk%zz")],
        );
        assert!(!error.unwrap_err().contains("sk"));
    }
}
