//! Errors as people read them: the whole cause chain on one line.
//!
//! `Display` of an error is its own message only; where an error leaves the process (a gRPC
//! status, a log line, a message to the wrapper) the causes must go with it, or "error
//! sending request" arrives without the TLS reason that explains it.

/// `error` and each of its sources, joined with `": "`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Some errors repeat their source's message in their own; say it once.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|inner| inner as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn every_cause_is_said_once() {
        let tls = Layer("invalid peer certificate: UnknownIssuer", None);
        let connect = Layer("client error (Connect)", Some(Box::new(tls)));
        let request = Layer("error sending request", Some(Box::new(connect)));
        assert_eq!(
            chain(&request),
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        let repeated = Layer("reading x: gone", Some(Box::new(Layer("gone", None))));
        assert_eq!(chain(&repeated), "reading x: gone");
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
