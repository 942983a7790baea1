//! `publish` scenario (in progress).

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
}

pub async fn run(_args: Args) -> Result<bool, String> {
    Err("not implemented yet".into())
}
