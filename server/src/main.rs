fn main() -> anyhow::Result<()> {
    ferry_server::Args::parse_and_run()
}
