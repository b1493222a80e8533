//! [`declare_train_config!`]: one declaration per config key, from which the TOML struct,
//! its defaults, the CLI overrides and the reference table are generated.

/// Declares the training config. Each entry is
/// `/// doc` `[clap arg settings]` `key: plain|optional Type = default;`:
/// - `plain`: the key holds a `Type` (its default is `default`);
/// - `optional`: the key holds an `Option<Type>` (`default` is an `Option`), unset when absent.
///
/// Generates `TrainConfig` (serde, unknown keys rejected, defaults at the field),
/// `TrainOverrides` (a clap `Args` struct with one `--key-name` flag per key, whose help is
/// the key's doc; a flag that is given overrides the key) and `KEYS` (each key's name, type
/// and doc, for the reference table).
macro_rules! declare_train_config {
    ($(
        $(#[doc = $doc:literal])*
        [$($arg:tt)*] $key:ident : $kind:ident $ty:ty = $default:expr;
    )*) => {
        /// Everything `clipfleet train` needs. Field names are the TOML keys; see
        /// `docs/configuration.md` for the table of keys, flags and defaults.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct TrainConfig {
            $( $(#[doc = $doc])* pub $key: config_field_type!($kind $ty), )*
        }

        impl Default for TrainConfig {
            fn default() -> Self {
                TrainConfig { $( $key: $default, )* }
            }
        }

        /// The `clipfleet train` flags: one per config key, each overriding the key when given.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct TrainOverrides {
            $( $(#[doc = $doc])* #[arg(long, $($arg)*)] pub $key: Option<$ty>, )*
        }

        impl TrainOverrides {
            /// Writes every flag that was given into `cfg`. `--model` without
            /// `--model-config` also clears a `model_config` from the file, so the preset named
            /// on the command line is the one trained.
            pub fn apply(&self, cfg: &mut TrainConfig) {
                $( config_apply!($kind cfg.$key, self.$key); )*
                if self.model.is_some() && self.model_config.is_none() {
                    cfg.model_config = None;
                }
            }
        }

        /// Every key with its Rust type and its doc, in declaration order.
        pub(crate) const KEYS: &[(&str, &str, &str)] =
            &[ $( (stringify!($key), stringify!($ty), concat!($($doc, "\n"),*)), )* ];
    };
}

/// The field type of a key of kind `plain` or `optional`.
macro_rules! config_field_type {
    (plain $ty:ty) => { $ty };
    (optional $ty:ty) => { Option<$ty> };
}

/// Copies a given flag into its key.
macro_rules! config_apply {
    (plain $target:expr, $flag:expr) => {
        if let Some(v) = &$flag {
            $target = v.clone();
        }
    };
    (optional $target:expr, $flag:expr) => {
        if let Some(v) = &$flag {
            $target = Some(v.clone());
        }
    };
}
