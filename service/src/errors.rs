//! Walking an error's chain of causes, in one place.
//!
//! `Display` on most errors prints only the outermost message: rdkafka, apache-avro and
//! `std::io` keep the reason that matters (which field mismatched, which address refused) in
//! `source()`. A log line, a dead-letter header or an API answer that showed only the outer
//! text would hide it.

use std::error::Error;

/// The causes of `error`, outermost first, without `error` itself.
pub fn causes<'a>(error: &'a dyn Error) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(error.source(), |&cause: &&'a (dyn Error + 'static)| {
        cause.source()
    })
}

/// `error` and every cause, outermost first, joined by `: ` (`outer: cause: root cause`).
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    for cause in causes(error) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to start")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to connect")]
    struct Middle(#[source] std::io::Error);

    fn sample() -> Outer {
        Outer(Middle(std::io::Error::other("connection refused")))
    }

    #[test]
    fn causes_leave_out_the_error_itself() {
        let error = sample();
        let causes: Vec<String> = causes(&error).map(ToString::to_string).collect();
        assert_eq!(causes, ["failed to connect", "connection refused"]);
    }

    #[test]
    fn chain_joins_every_message_outermost_first() {
        assert_eq!(
            error_chain(&sample()),
            "failed to start: failed to connect: connection refused"
        );
        assert_eq!(
            error_chain(&std::io::Error::other("alone")),
            "alone",
            "an error without causes is its own message"
        );
    }
}
