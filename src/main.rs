fn main() {
    eprintln!("layerfs: not yet built");
    std::process::exit(1);
}
