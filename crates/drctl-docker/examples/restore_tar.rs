//! Restore a volume from a tar file through the same code `drctl` uses (staged, through the
//! archive API), with nothing to decode: `scripts/bench.sh` times it beside the bare archive
//! API and drctl's own restore, to separate the cost of the transfer from the decoding.
//!
//!     restore_tar VOLUME FILE.tar

use drctl_docker::{DockerClient, RestoreOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, volume, file] = args.as_slice() else {
        eprintln!("usage: restore_tar VOLUME FILE.tar");
        std::process::exit(2);
    };
    let mut f = match tokio::fs::File::open(file).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: failed to open {file}: {e}");
            std::process::exit(1);
        }
    };
    let opts = RestoreOptions {
        fast_path: false,
        ..Default::default()
    };
    let result = match DockerClient::connect() {
        Ok(client) => client.restore_volume(volume, &opts, &mut f).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => println!(
            "restored volume {volume}: {} entries, {} bytes in {:.2}s ({})",
            r.entries, r.bytes, r.seconds, r.emptied_by
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
