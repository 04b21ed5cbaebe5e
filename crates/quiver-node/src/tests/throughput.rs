use std::time::{Duration, Instant};

use super::BusyMeter;

/// Feeds `jobs` jobs running together for `secs` seconds, each yielding `per_job` tokens/s.
fn run(meter: &BusyMeter, start: Instant, jobs: u32, per_job: u32, secs: u64) -> Instant {
    for _ in 0..jobs {
        meter.job_started(start);
    }
    let mut now = start;
    for _ in 0..secs * 10 {
        now += Duration::from_millis(100);
        for _ in 0..jobs {
            meter.tokens(now, per_job / 10);
        }
    }
    for _ in 0..jobs {
        meter.job_ended(now);
    }
    now
}

#[test]
fn one_job_measures_its_own_speed() {
    let t = Instant::now();
    let m = BusyMeter::new(t);
    assert_eq!(m.tokens_per_sec(), 0.0, "nothing measured yet");
    run(&m, t, 1, 60, 6);
    assert!((m.tokens_per_sec() - 60.0).abs() < 1.0, "{}", m.tokens_per_sec());
}

#[test]
fn jobs_decoded_together_add_up() {
    let t = Instant::now();
    let m = BusyMeter::new(t);
    run(&m, t, 4, 40, 6);
    assert!((m.tokens_per_sec() - 160.0).abs() < 5.0, "{}", m.tokens_per_sec());
}

#[test]
fn idle_time_does_not_count() {
    let t = Instant::now();
    let m = BusyMeter::new(t);
    let end = run(&m, t, 1, 50, 3);
    // A minute idle, then three more busy seconds: 6 s busy in all, at 50 tokens/s.
    run(&m, end + Duration::from_secs(60), 1, 50, 3);
    assert!((m.tokens_per_sec() - 50.0).abs() < 1.0, "{}", m.tokens_per_sec());
}
