//! A run killed with SIGKILL at any moment leaves the inputs unchanged and
//! the outputs of the last complete run readable and whole.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{gato_bin, read_parquet, toy_1d_processes};

fn pipeline_text() -> String {
    format!(
        "name: kill\nsources:\n  mc:\n    files: [sample.parquet]\n    process_column: process\n{}\
         selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [2, 3]\n\
         training:\n  epochs: 15\n\
         output: out\n",
        toy_1d_processes("mc")
    )
}

/// Checks that summary.json lists only whole Parquet files of `rows` rows.
fn assert_outputs_whole(dir: &Path, rows: usize) {
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("out/summary.json")).unwrap(),
    )
    .unwrap();
    for run in summary["runs"].as_array().unwrap() {
        for output in run["outputs"].as_array().unwrap() {
            let path = dir.join(output["output"].as_str().unwrap());
            let n: usize = read_parquet(&path).iter().map(|b| b.num_rows()).sum();
            assert_eq!(n, rows, "{} is not whole", path.display());
        }
    }
}

#[test]
fn kill_during_run_keeps_last_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(gato_bin())
        .args([
            "generate",
            "toy-1d",
            "--out",
            "sample.parquet",
            "--signal",
            "20000",
            "--background",
            "60000",
        ])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let input = std::fs::read(dir.path().join("sample.parquet")).unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), pipeline_text()).unwrap();

    let status = Command::new(gato_bin())
        .args(["-q", "run", "pipeline.yaml"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let summary = || -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
        )
        .unwrap()
    };
    let first = summary();

    // Kill later and later runs; each leaves the earlier outputs whole.
    for delay_ms in [50u64, 300, 800, 1500, 2500, 4000] {
        let mut child = Command::new(gato_bin())
            .args(["-q", "run", "pipeline.yaml", "--overwrite"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("sample.parquet")).unwrap(),
            input,
            "input changed"
        );
        assert_outputs_whole(dir.path(), 80_000);
        // Whether the killed run finished or not, the summary describes a
        // complete run, and the same pipeline gives the same categories.
        let now = summary();
        for k in 0..2 {
            assert_eq!(
                now["runs"][k]["table"], first["runs"][k]["table"],
                "after {delay_ms} ms"
            );
            assert_eq!(now["runs"][k]["parameters"], first["runs"][k]["parameters"]);
        }
    }

    // A complete run afterwards cleans up the staging directory.
    let status = Command::new(gato_bin())
        .args(["-q", "run", "pipeline.yaml", "--overwrite"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!dir.path().join("out/.gato-staging").exists());
    assert_outputs_whole(dir.path(), 80_000);
}

/// Starts `gato run` on a generated 1D toy with the events on disk and
/// endless training, with `$TMPDIR` set to `dir/tmp`, which it returns.
fn start_disk_run(
    dir: &Path,
    signal: usize,
    background: usize,
    memory_limit: &str,
) -> (std::path::PathBuf, std::process::Child) {
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let text = format!(
        "name: interrupt\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: {signal}, \
         background: {background} }}\n{}selection:\n  sql: SELECT score, weight FROM events\n  \
         discriminants: [score]\n  events: disk\nmodel:\n  kind: sigmoid\n  \
         categories: [3]\ntraining:\n  epochs: 100000\noutput: out\n",
        toy_1d_processes("toy")
    );
    std::fs::write(dir.join("pipeline.yaml"), text).unwrap();
    let child = Command::new(gato_bin())
        .args(["-q", "run", "--memory-limit", memory_limit, "pipeline.yaml"])
        .env("TMPDIR", &tmp)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (tmp, child)
}

#[test]
fn interrupt_removes_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let (tmp, child) = start_disk_run(dir.path(), 20_000, 60_000, "4096");
    // Wait for the staging directory: by then the events are on disk.
    let staging = dir.path().join("out/.gato-staging");
    let started = std::time::Instant::now();
    while !staging.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never started training"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        names(&tmp).iter().any(|n| n.starts_with("gato-events-")),
        "{:?}",
        names(&tmp)
    );

    // SAFETY: sends SIGINT to the child started above.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted: removed"), "{stderr}");
    assert_eq!(names(&tmp), Vec::<String>::new());
    assert!(!staging.exists());
}

/// Ctrl-C while the selection's sort spills to disk removes the spill files
/// along with the other temporary files.
#[test]
fn interrupt_during_spilling_sort_removes_spill_files() {
    let dir = tempfile::tempdir().unwrap();
    // 2M events take more than the sort's 32 MiB under a 64 MiB budget.
    let (tmp, mut child) = start_disk_run(dir.path(), 500_000, 1_500_000, "64");
    // Files of DataFusion's sort lie in gato-spill-*/datafusion-*/.
    let spilled = || -> bool {
        let Ok(entries) = std::fs::read_dir(&tmp) else { return false };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gato-spill-"))
            .any(|spill| {
                std::fs::read_dir(spill.path()).into_iter().flatten().flatten().any(
                    |df| {
                        std::fs::read_dir(df.path())
                            .is_ok_and(|mut files| files.next().is_some())
                    },
                )
            })
    };
    let started = std::time::Instant::now();
    while !spilled() {
        assert!(
            child.try_wait().unwrap().is_none()
                && !dir.path().join("out/.gato-staging").exists(),
            "the selection ended before the sort spilled to disk"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "the sort never spilled");
        std::thread::sleep(Duration::from_millis(5));
    }

    // SAFETY: sends SIGINT to the child started above.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let left: Vec<_> =
        std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
