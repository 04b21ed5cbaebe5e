//! Reputation reports from gossip (`ReputationReport::decode_checked`): whatever is accepted
//! holds 1..=32 observations of distinct peers within the plausible job counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_proto::ReputationReport;
use quiver_proto::reputation::{MAX_JOBS_PER_OBSERVATION, MAX_OBSERVATIONS};

fuzz_target!(|data: &[u8]| {
    let Ok((_, observations)) = ReputationReport::decode_checked(data) else { return };
    assert!((1..=MAX_OBSERVATIONS).contains(&observations.len()));
    for (i, o) in observations.iter().enumerate() {
        assert!(o.successes + o.failures > 0);
        assert!(o.successes <= MAX_JOBS_PER_OBSERVATION && o.failures <= MAX_JOBS_PER_OBSERVATION);
        assert!(observations[..i].iter().all(|p| p.peer != o.peer));
    }
});
