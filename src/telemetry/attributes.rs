//! Span attribute names, in one place: the OpenTelemetry GenAI semantic conventions
//! (written out here: the `opentelemetry-semantic-conventions` GenAI constants are
//! deprecated while the conventions are in development), the HTTP and error ones, and
//! Switchyard's own under `switchyard.`.

// GenAI: on the CLIENT span of each upstream attempt.
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
pub const GEN_AI_REQUEST_TOP_P: &str = "gen_ai.request.top_p";
pub const GEN_AI_REQUEST_SEED: &str = "gen_ai.request.seed";
pub const GEN_AI_REQUEST_STOP_SEQUENCES: &str = "gen_ai.request.stop_sequences";
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// Opt-in content (`capture_content`), as JSON text cut at `content_max_bytes`.
pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";

/// `gen_ai.operation.name` values.
pub const OPERATION_CHAT: &str = "chat";
pub const OPERATION_EMBEDDINGS: &str = "embeddings";

// HTTP, server and errors.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const ERROR_TYPE: &str = "error.type";

// Switchyard's own. The key is named, never shown.
pub const REQUEST_ID: &str = "switchyard.request_id";
pub const KEY_NAME: &str = "switchyard.key.name";
pub const TEAM_NAME: &str = "switchyard.team.name";
/// The public model the client asked for.
pub const MODEL: &str = "switchyard.model";
/// `provider/upstream model`.
pub const TARGET: &str = "switchyard.target";
pub const ATTEMPT_NUMBER: &str = "switchyard.attempt.number";
/// `success`, an error label, or `client_left`.
pub const ATTEMPT_OUTCOME: &str = "switchyard.attempt.outcome";
pub const ATTEMPTS: &str = "switchyard.attempts";
/// Why this attempt was made after an earlier one: the error label that caused it.
pub const RETRY_REASON: &str = "switchyard.retry.reason";
pub const FALLBACK_REASON: &str = "switchyard.fallback.reason";
/// The attempt continues a stream that broke (a resumption).
pub const RESUMPTION: &str = "switchyard.resumption";
pub const BREAKER_STATE: &str = "switchyard.breaker.state";
pub const LIMIT_DECISION: &str = "switchyard.limit.decision";
pub const STREAM: &str = "switchyard.stream";
pub const CLIENT_LEFT: &str = "switchyard.client_left";
/// The request's totals (a resumed stream's are both attempts'), on the server span: the
/// GenAI usage names stay on the attempt spans so that summing them never counts twice.
pub const USAGE_INPUT_TOKENS: &str = "switchyard.usage.input_tokens";
pub const USAGE_OUTPUT_TOKENS: &str = "switchyard.usage.output_tokens";
/// `provider` or `estimated`.
pub const USAGE_SOURCE: &str = "switchyard.usage.source";
pub const COST_USD: &str = "switchyard.cost.usd";
pub const COST_SOURCE: &str = "switchyard.cost.source";
pub const FINISH_REASONS: &str = "switchyard.finish_reasons";
pub const RESUMED_ON: &str = "switchyard.resumed_on";
/// A feedback's score, on the span linked to the request it scores.
pub const FEEDBACK_SCORE: &str = "switchyard.feedback.score";
