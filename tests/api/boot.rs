//! Bad settings stop the real binary before it listens: exit code 2 and one
//! line naming the setting and the value.

use std::process::Command;

fn run_exdaas(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exdaas"));
    cmd.env("DETS_ROOT", data.path())
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("exdaas runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_values_stop_the_start_with_exit_code_2() {
    for (name, value) in [
        ("SHARD_LIMIT", "0"),
        ("SHARD_LIMIT", "-3"),
        ("SHARD_LIMIT", "abc"),
        ("PORT", "http"),
        ("EXDAAS_SYNC", "always"),
        ("EXDAAS_CACHE_MIB", "lots"),
        ("EXDAAS_LISTEN_ADDR", "localhost:80"),
    ] {
        let (code, stderr) = run_exdaas(&[(name, value)]);
        assert_eq!(code, Some(2), "{name}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}={value}: one line, got {stderr}");
        assert!(
            lines[0].contains(name) && lines[0].contains(value),
            "{name}={value}: {stderr}"
        );
    }
}

#[test]
fn a_data_folder_that_cannot_be_created_stops_the_start() {
    let parent = tempfile::tempdir().expect("temp dir");
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a folder").expect("write");
    let bad = file.join("data");
    let bad = bad.to_string_lossy();
    let (code, stderr) = run_exdaas(&[("DETS_ROOT", &bad)]);
    assert_eq!(code, Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("DETS_ROOT") && last.contains(&*bad), "{stderr}");
}

#[test]
fn help_says_how_to_configure_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for setting in [
        "PORT",
        "DETS_ROOT",
        "SHARD_LIMIT",
        "EXDAAS_SYNC",
        "EXDAAS_CACHE_MIB",
        "EXDAAS_CONFIG",
    ] {
        assert!(help.contains(setting), "--help does not mention {setting}:\n{help}");
    }
}
