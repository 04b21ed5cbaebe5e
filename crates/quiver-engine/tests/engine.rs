//! The integration tests of quiver-engine, one test binary with each file a module (one release
//! compile and link of llama.cpp's bindings instead of three).

mod common;

mod embed;
mod hf;
mod llama;
mod models;
mod openai;
mod split;
mod structured;
