fn main() -> anyhow::Result<()> {
    ferry_operator::Args::parse_and_run()
}
