use layerfs::options::{self, Command};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(first) = args.first().and_then(|a| a.to_str()) {
        if layerfs::tools::SUBCOMMANDS.contains(&first) {
            std::process::exit(layerfs::tools::main(args));
        }
    }
    let cmd = match options::parse_args(args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("layerfs: {msg}");
            eprintln!("Try 'layerfs --help' for more information.");
            std::process::exit(1);
        }
    };
    let opts = match cmd {
        Command::Version => {
            print!("{}", options::version_text());
            return;
        }
        Command::Help => {
            print!("{}", options::help_text());
            return;
        }
        Command::Mount(o) => o,
    };
    let level = if opts.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(layerfs::daemon::LogSink)))
        .init();
    if let Err(msg) = options::validate(&opts) {
        eprintln!("layerfs: {msg}");
        std::process::exit(1);
    }
    if let Some(f) = &opts.log_file {
        if let Err(e) = layerfs::daemon::set_log_file(f) {
            eprintln!("layerfs: log: {}: {e}", f.display());
            std::process::exit(1);
        }
    }
    for w in &opts.warnings {
        eprintln!("layerfs: warning: {w}");
    }
    std::process::exit(layerfs::daemon::run(&opts));
}
