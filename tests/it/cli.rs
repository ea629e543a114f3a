//! The executable's own documentation: committed completions and man page
//! match what the binary generates, and usage errors exit 2.

use crate::harness::run_cli;

#[test]
fn committed_completions_and_man_page_are_current() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (args, file) in [
        (
            vec!["completions", "bash"],
            "completions/apisix-stream.bash",
        ),
        (vec!["completions", "zsh"], "completions/_apisix-stream"),
        (
            vec!["completions", "fish"],
            "completions/apisix-stream.fish",
        ),
        (vec!["man"], "man/apisix-stream.1"),
    ] {
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 0, "{err}");
        assert!(!out.is_empty());
        let committed = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            committed == out,
            "{file} is stale: regenerate with `apisix-stream {}`",
            args.join(" ")
        );
    }
}

#[test]
fn usage_errors_exit_2_and_version_prints() {
    let (code, _, err) = run_cli(&["serve", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-such-flag"));
    let (code, out, _) = run_cli(&["-V"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("apisix-stream "), "{out}");
}
