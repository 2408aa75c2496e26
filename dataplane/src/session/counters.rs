//! The `counters!` macro: [`super::Counters`] is declared once, and the macro gives it what
//! must name every field (adding the loops' counts, listing them for the exit report and the
//! metrics), so that a counter added later cannot be left out of any of them.

/// Declares a struct of `u64` counters with `add` (another's counts added to these) and
/// `fields` (name and value of each, in declaration order).
macro_rules! counters {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: u64,
            )*
        }
    ) => {
        $(#[$struct_meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: u64,
            )*
        }

        impl $name {
            /// Adds `other`'s counts to these: the box's totals over its poll loops.
            pub fn add(&mut self, other: &$name) {
                $( self.$field += other.$field; )*
            }

            /// Every counter's name and value, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field), )*]
            }
        }
    };
}
