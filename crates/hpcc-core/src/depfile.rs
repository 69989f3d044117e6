//! Make dependency files. Placeholder until the parser and renderers land.
