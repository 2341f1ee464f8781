fn main() {
    eprintln!("sipload: not built yet");
    std::process::exit(2);
}
