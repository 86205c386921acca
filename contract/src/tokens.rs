//! Token counts across a process boundary.

/// Response header of every generation answer: the prompt's tokens, as the server counted them.
/// With the output events of a stream (one per token), it lets the router charge a stream whose
/// client did not ask for `usage`.
pub const PROMPT_TOKENS_HEADER: &str = "x-ferry-prompt-tokens";
