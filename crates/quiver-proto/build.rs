fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/quiver.proto");
    prost_build::Config::new().compile_protos(&["proto/quiver.proto"], &["proto"])?;
    Ok(())
}
