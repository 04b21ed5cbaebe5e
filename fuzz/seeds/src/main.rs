//! Writes the seed corpora: `quiver-fuzz-seeds <dir>` makes `<dir>/<target>/seed-<name>`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    for (target, name, bytes) in quiver_fuzz_seeds::seeds() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
