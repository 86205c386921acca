//! Load generator and concurrency sweep for any OpenAI-compatible endpoint, with tables and plots.
