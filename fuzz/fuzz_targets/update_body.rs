//! Arbitrary bytes as a PUT body: never panics; an error changes nothing;
//! a success is stored and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod shared;
use shared::*;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let id = IDS[usize::from(selector) % IDS.len()];
    let e = seeded();
    let subjects = subjects();
    let before = snapshot(&e, &subjects, MIDNIGHT);
    match e.apply_update_json(id, body, MIDNIGHT) {
        Err(err) => {
            assert!(matches!(err.code().as_u32(), 4000 | 4200), "{err}");
            assert_eq!(snapshot(&e, &subjects, MIDNIGHT), before, "state changed after {err}");
        }
        Ok(info) => {
            assert_eq!(e.get(id).as_ref(), Some(&info));
            assert_round_trips(&info);
        }
    }
});
