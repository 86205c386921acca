use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_router::run(ferry_router::Args::parse()).await
}
