fn main() {
    eprintln!("siplb: the balancer engine is not built yet");
    std::process::exit(2);
}
