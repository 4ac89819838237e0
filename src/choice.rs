//! Closed sets of named values (strategies, formats, methods): the names a user types live
//! with the enum, once, so the CLI, recipes and messages parse and print them alike without
//! the library knowing any command-line parser.

/// An enum whose values have fixed names.
pub trait Choice: Copy + Eq + Sized + 'static {
    /// Every value, in the order help texts list them.
    const ALL: &'static [Self];
    /// The name a user types.
    fn name(self) -> &'static str;
    /// One line on what the value does (from the variant's doc comment).
    fn help(self) -> &'static str;

    /// The value named `s` (ignoring ASCII case), if any.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }

    /// Every name, comma-separated (for messages).
    fn names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Declares an enum and its [`Choice`] names: `choice! { pub enum E { /// doc
/// A = "a", B = "b" } }`. Variant doc comments become [`Choice::help`].
#[macro_export]
macro_rules! choice {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[doc = $doc:literal])* $var:ident = $s:literal),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[doc = $doc])* $var),*
        }

        impl $crate::choice::Choice for $name {
            const ALL: &'static [Self] = &[$($name::$var),*];
            fn name(self) -> &'static str {
                match self {
                    $($name::$var => $s),*
                }
            }
            fn help(self) -> &'static str {
                match self {
                    $($name::$var => concat!($($doc, "\n"),*)),*
                }
            }
        }

        impl $name {
            /// The name a user types (see [`Choice`](crate::choice::Choice)).
            pub fn as_str(self) -> &'static str {
                $crate::choice::Choice::name(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Choice;

    crate::choice! {
        /// A test set.
        enum Pet {
            /// Barks.
            /// Loudly.
            Dog = "dog",
            Cat = "cat",
        }
    }

    #[test]
    fn names_parse_back_and_docs_become_help() {
        for p in Pet::ALL {
            assert_eq!(Pet::parse(p.name()), Some(*p));
        }
        assert_eq!(Pet::parse("cow"), None);
        assert_eq!(Pet::names(), "dog, cat");
        assert_eq!(Pet::Dog.help(), " Barks.\n Loudly.\n");
        assert_eq!(Pet::Cat.help(), "");
        assert_eq!(Pet::Dog.to_string(), "dog");
    }
}
