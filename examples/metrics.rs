//! Exports the engine's metrics in the Prometheus text format (feature
//! `metrics`): installs `metrics-exporter-prometheus` as the recorder, makes
//! a few decisions and a configuration write, and prints what a Prometheus
//! server would scrape.
//!
//! Run: `cargo run --release --example metrics --features metrics`

use benefit_quota::{Amount, BenefitType, Engine, Subject};
use metrics_exporter_prometheus::PrometheusBuilder;

fn main() {
    // Install the recorder before making the engine: the engine registers
    // its decision counters when it is made.
    let prometheus = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => return eprintln!("could not install the recorder: {e}"),
    };
    let engine = Engine::new();
    let created = engine.create_json(
        r#"{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point",
            "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":3,"trigger_unit":"day"}}"#,
    );
    if let Err(e) = created {
        return eprintln!("{e}");
    }
    let now = 1_741_708_800;
    let device = Subject::device("sn-0001");
    for _ in 0..5 {
        let _ = engine.try_consume(
            &device,
            BenefitType::ResourcePoint,
            Amount::from_units(1),
            now,
        );
    }
    let _ = engine.check(&Subject::consumer("nobody"), now);
    let _ = engine.check(&device, now * 1000); // milliseconds by mistake: rejected
    print!("{}", prometheus.render());
}
