//! A small argument reader shared by the subcommands: `--flag value`, `--flag=value`, bare
//! switches and positionals, with errors that name the offending argument.

use std::fmt;

/// Arguments split into options and positionals, consumed by the subcommand that owns them.
#[derive(Debug, Default)]
pub struct Args {
    options: Vec<(String, Option<String>)>,
    positionals: Vec<String>,
}

/// An argument error, printed with the usage of the subcommand.
#[derive(Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

impl Args {
    /// Splits `argv`. `takes_value` names the options that consume the next argument.
    pub fn parse(argv: &[String], takes_value: &[&str]) -> Result<Self, ArgError> {
        let mut args = Args::default();
        let mut iter = argv.iter();
        while let Some(arg) = iter.next() {
            if arg == "--" {
                args.positionals.extend(iter.by_ref().cloned());
                break;
            }
            if let Some(name) = arg.strip_prefix("--") {
                if let Some((name, value)) = name.split_once('=') {
                    args.options.push((name.to_string(), Some(value.to_string())));
                } else if takes_value.contains(&name) {
                    let value = iter
                        .next()
                        .ok_or_else(|| ArgError(format!("option --{name} needs a value")))?;
                    args.options.push((name.to_string(), Some(value.clone())));
                } else {
                    args.options.push((name.to_string(), None));
                }
            } else {
                args.positionals.push(arg.clone());
            }
        }
        Ok(args)
    }

    /// The value of `--name`, if given; an error if given without a value.
    pub fn value(&mut self, name: &str) -> Result<Option<String>, ArgError> {
        match self.options.iter().position(|(n, _)| n == name) {
            None => Ok(None),
            Some(index) => match self.options.remove(index).1 {
                Some(value) => Ok(Some(value)),
                None => Err(ArgError(format!("option --{name} needs a value"))),
            },
        }
    }

    /// Whether the switch `--name` was given.
    pub fn switch(&mut self, name: &str) -> bool {
        match self.options.iter().position(|(n, _)| n == name) {
            None => false,
            Some(index) => {
                self.options.remove(index);
                true
            }
        }
    }

    /// The next positional argument.
    pub fn positional(&mut self) -> Option<String> {
        if self.positionals.is_empty() {
            None
        } else {
            Some(self.positionals.remove(0))
        }
    }

    /// Fails on anything the subcommand did not consume.
    pub fn finish(self) -> Result<(), ArgError> {
        if let Some((name, _)) = self.options.first() {
            return Err(ArgError(format!("unknown option --{name}")));
        }
        if let Some(extra) = self.positionals.first() {
            return Err(ArgError(format!("unexpected argument {extra:?}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_values_and_positionals() {
        let mut args =
            Args::parse(&argv(&["--keylog", "k.txt", "cap.pcap", "--out=dir", "--verbose"]), &["keylog", "out"])
                .unwrap();
        assert_eq!(args.value("keylog").unwrap().as_deref(), Some("k.txt"));
        assert_eq!(args.value("out").unwrap().as_deref(), Some("dir"));
        assert!(args.switch("verbose"));
        assert_eq!(args.positional().as_deref(), Some("cap.pcap"));
        assert_eq!(args.finish(), Ok(()));
    }

    #[test]
    fn missing_value_and_leftovers_are_errors() {
        assert!(Args::parse(&argv(&["--keylog"]), &["keylog"]).is_err());
        let args = Args::parse(&argv(&["--bogus"]), &[]).unwrap();
        assert_eq!(args.finish(), Err(ArgError("unknown option --bogus".into())));
    }
}
