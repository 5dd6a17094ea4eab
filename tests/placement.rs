//! Replicas per accelerator core, with the Neuron runtime played by the test operator library
//! (models/fixtures/custom_op.cpp): its `torch.classes.neuron.Runtime` records each placement
//! call, and a copy of the tiny model marked as a Neuron export carries the placement helper that
//! models/export.py writes for Neuron. So `--device neuron` runs here on the CPU, through the same
//! code as on an inf2 instance: the plan from the environment, one replica per visible core, each
//! replica's modules loaded while the runtime's default core is its own.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use blipserve_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

struct FakeNeuron {
    _dir: tempfile::TempDir,
    library: String,
    model: String,
    log: std::path::PathBuf,
}

fn fake_neuron() -> FakeNeuron {
    let dir = tempfile::tempdir().unwrap();
    let tiny = model_dir("tiny");
    let built = op_fixtures(dir.path(), &["--fake-neuron-model".as_ref(), tiny.as_os_str()]);
    let log = dir.path().join("placement.log");
    FakeNeuron {
        library: built["library"].as_str().unwrap().into(),
        model: built["fake_neuron_model"].as_str().unwrap().into(),
        log,
        _dir: dir,
    }
}

fn worker_args(neuron: &FakeNeuron, extra: &[&str]) -> Vec<OsString> {
    let fixed = ["worker", "--listen", "127.0.0.1", "--port", "0", "--device", "neuron", "--model"];
    let mut args: Vec<OsString> = fixed.iter().map(OsString::from).collect();
    args.extend([&neuron.model, "--neuron-lib", &neuron.library].iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args
}

fn start(neuron: &FakeNeuron, env: &[(&str, &str)]) -> Server {
    let log = neuron.log.to_str().unwrap();
    let mut env = env.to_vec();
    env.push(("BLIPSERVE_TEST_PLACEMENT_LOG", log));
    let server = Server::spawn_with_env(BIN, &worker_args(neuron, &[]), &env);
    server.wait_ready(std::time::Duration::from_secs(60));
    server
}

/// The runtime calls, in order: (start_nc, nc_count) per line.
fn placement_calls(log: &Path) -> Vec<(i64, i64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.split_whitespace().map(|n| n.parse().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect()
}

fn probabilities(server: &Server, image: &[u8], questions: &[&str]) -> Vec<f64> {
    let r = server.detect(image, questions);
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    body["answers"].as_array().unwrap().iter().map(|a| a["probability"].as_f64().unwrap()).collect()
}

#[test]
fn one_replica_per_visible_neuron_core_each_bound_to_its_own() {
    let neuron = fake_neuron();
    let server = start(&neuron, &[("NEURON_RT_VISIBLE_CORES", "4-5")]);

    let info: Value = client().get(server.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!(info["device"], "neuron");
    assert_eq!(info["replicas"], 2, "{info}");
    let cores: Vec<u64> =
        info["placement"].as_array().unwrap().iter().map(|p| p["neuron_core"].as_u64().unwrap()).collect();
    assert_eq!(cores, vec![4, 5], "{info}");
    assert_eq!(info["placement"][1]["visible_cores"], "NEURON_RT_VISIBLE_CORES=4-5");

    // Each replica's modules were loaded with the runtime's default set to its own core (an
    // index among the visible ones, as the runtime numbers them), then the default restored.
    let calls = placement_calls(&neuron.log);
    let mut bound: Vec<i64> = calls.iter().filter(|c| c.1 == 1).map(|c| c.0).collect();
    bound.sort();
    assert_eq!(bound, vec![0, 1], "{calls:?}");
    assert_eq!(calls.len(), 4, "{calls:?}");
    for pair in calls.chunks(2) {
        assert_eq!(pair[1], (-1, -1), "the default is restored after each replica: {calls:?}");
    }

    // The replicas answer as the CPU does on the same weights, whichever replica takes a frame.
    let cpu = Server::start(BIN, "tiny", &["--replicas", "1"]);
    let image = jpeg(&synthetic_frame(320, 240, 5), 90, Subsamp::Sub2x2);
    let questions = ["is the dog barking?", "is there a cat?"];
    let expected = probabilities(&cpu, &image, &questions);
    for _ in 0..4 {
        assert_eq!(probabilities(&server, &image, &questions), expected);
    }
}

#[test]
fn the_core_count_can_come_from_neuron_rt_num_cores() {
    let neuron = fake_neuron();
    let server = start(&neuron, &[("NEURON_RT_NUM_CORES", "1"), ("NEURON_RT_VISIBLE_CORES", "")]);
    let info: Value = client().get(server.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!(info["replicas"], 1, "{info}");
    assert_eq!(info["placement"][0]["visible_cores"], "NEURON_RT_NUM_CORES=1");
}

#[test]
fn impossible_placements_are_refused_at_start() {
    let neuron = fake_neuron();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .args(worker_args(&neuron, extra))
            .env_remove("NEURON_RT_VISIBLE_CORES")
            .env_remove("NEURON_RT_NUM_CORES")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "a worker started with {extra:?} {env:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--replicas", "3"], &[("NEURON_RT_VISIBLE_CORES", "0-1")]);
    assert!(err.contains("3 replicas but 2 NeuronCore(s) visible (NEURON_RT_VISIBLE_CORES=0-1)"), "{err}");
    let err = run(&[], &[("NEURON_RT_VISIBLE_CORES", "1-0")]);
    assert!(err.contains("runs backwards"), "{err}");
    if !Path::new("/dev/neuron0").exists() {
        let err = run(&[], &[]);
        assert!(err.contains("no NeuronCore is visible"), "{err}");
    }
    // The runtime must see the core a replica is bound to: the helper reports its count (here
    // the runtime sees none, as when another process holds the cores).
    let err = run(&[], &[("NEURON_RT_NUM_CORES", "2"), ("BLIPSERVE_TEST_RUNTIME_CORES", "0")]);
    assert!(err.contains("NeuronCore index") && err.contains("sees 0 core(s)"), "{err}");
}
