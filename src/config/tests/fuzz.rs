//! No input makes the loader panic.

use proptest::prelude::*;

use super::model::FULL;
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        let _ = parse(&text, "f", &no_env);
    }

    #[test]
    fn damaged_configs_never_panic(at in 0..FULL.len(), cut in any::<bool>(), c in any::<char>()) {
        let at = (0..=at).rev().find(|i| FULL.is_char_boundary(*i)).unwrap_or(0);
        let text = if cut {
            FULL[..at].to_string()
        } else {
            let mut text = FULL.to_string();
            text.insert(at, c);
            text
        };
        let _ = parse(&text, "f", &env);
    }
}
