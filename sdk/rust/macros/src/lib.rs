//! `#[edgesync_plugin::export]`: turns an `impl Plugin for T` block into a
//! WebAssembly component export.
//!
//! It reads which hook methods the impl block defines and generates a WIT
//! world exporting `lifecycle` plus exactly the families those methods belong
//! to, then runs `wit_bindgen::generate!` on it with the shared types remapped
//! (`with:`) to the ones `edgesync-plugin` generated once. A plugin therefore
//! exports only what it implements, and the host — which inspects a
//! component's exports — never calls a family the plugin did not write.
//!
//! Why a proc-macro and not one world per combination in the WIT: five
//! families make 31 worlds, and a fixed world forces every export; the
//! contract stays one file and the macro composes a world per plugin.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{ImplItem, ItemImpl, parse_macro_input};

/// The contract, embedded at macro build time from `sdk/wit/plugin.wit`.
const CONTRACT_WIT: &str = include_str!("../../../wit/plugin.wit");

/// The name of the generated world, inside package `edgesync:plugin@0.1.0`.
const WORLD: &str = "edgesync-rust-guest";

/// Hook families and the trait methods that select them.
const FAMILIES: &[(&str, &[&str])] = &[
    (
        "auth-hooks",
        &["on_connect", "on_subscribe", "on_disconnect"],
    ),
    ("message-hooks", &["on_message", "on_batch"]),
    ("storage-hooks", &["on_write"]),
    ("timer-hooks", &["on_timer"]),
];

/// Export a plugin. Put it on the `impl edgesync_plugin::Plugin for T` block:
///
/// ```ignore
/// #[edgesync_plugin::export]
/// impl Plugin for MyPlugin { /* the hooks you need */ }
/// ```
///
/// The component exports `lifecycle` and the hook families of the methods
/// the block defines (`on_connect`/`on_subscribe`/`on_disconnect` → auth,
/// `on_message`/`on_batch` → message, `on_write` → storage, `on_timer` →
/// timer). Use it once per crate.
#[proc_macro_attribute]
pub fn export(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let err = syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[edgesync_plugin::export] takes no arguments",
        );
        return err.to_compile_error().into();
    }
    let item_impl = parse_macro_input!(item as ItemImpl);
    let methods: Vec<String> = item_impl
        .items
        .iter()
        .filter_map(|it| match it {
            ImplItem::Fn(f) => Some(f.sig.ident.to_string()),
            _ => None,
        })
        .collect();
    let exported: Vec<&str> = FAMILIES
        .iter()
        .filter(|(_, hooks)| hooks.iter().any(|h| methods.iter().any(|m| m == h)))
        .map(|(family, _)| *family)
        .collect();

    let wit = world_wit(&exported);
    let self_ty = &item_impl.self_ty;
    let glue: Vec<proc_macro2::TokenStream> = exported.iter().map(|f| family_glue(f)).collect();

    quote! {
        #item_impl

        #[doc(hidden)]
        type __EdgesyncPluginType = #self_ty;

        #[doc(hidden)]
        #[allow(unsafe_code, clippy::all, missing_docs, dead_code, unused)]
        mod __edgesync_plugin_bindings {
            ::edgesync_plugin::__rt::wit_bindgen::generate!({
                inline: #wit,
                world: #WORLD,
                with: {
                    "edgesync:plugin/types@0.1.0": ::edgesync_plugin::wit::edgesync::plugin::types,
                },
                runtime_path: "::edgesync_plugin::__rt::wit_bindgen::rt",
                export_macro_name: "__edgesync_export",
            });

            type P = super::__EdgesyncPluginType;
            use ::edgesync_plugin::types as t;
            use ::edgesync_plugin::Plugin as _;

            pub struct Exports;

            impl exports::edgesync::plugin::lifecycle::Guest for Exports {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    ::edgesync_plugin::__rt::init::<P>(&config)
                }
            }

            #(#glue)*

            __edgesync_export!(Exports with_types_in self);
        }
    }
    .into()
}

/// The contract plus a world exporting `lifecycle` and `families`.
fn world_wit(families: &[&str]) -> String {
    let mut wit = String::with_capacity(CONTRACT_WIT.len() + 256);
    wit.push_str(CONTRACT_WIT);
    wit.push_str("\nworld ");
    wit.push_str(WORLD);
    wit.push_str(" {\n    import types;\n    export lifecycle;\n");
    for f in families {
        wit.push_str("    export ");
        wit.push_str(f);
        wit.push_str(";\n");
    }
    wit.push_str("}\n");
    wit
}

/// The `Guest` impl forwarding one family's exports to the `Plugin` trait.
fn family_glue(family: &str) -> proc_macro2::TokenStream {
    let module = format_ident!("{}", family.replace('-', "_"));
    let body = match family {
        "auth-hooks" => quote! {
            fn on_connect(conn: t::ConnInfo) -> t::ConnectVerdict {
                ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_connect(&conn))
            }
            fn on_subscribe(conn: t::ConnRef, pattern: ::std::string::String) -> t::SubscribeVerdict {
                ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_subscribe(&conn, &pattern))
            }
            fn on_disconnect(conn: t::ConnRef) {
                ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_disconnect(&conn))
            }
        },
        "message-hooks" => quote! {
            fn on_message(msg: t::PackedMessage) -> t::MessageAction {
                let verdict = match msg.unpack() {
                    ::std::result::Result::Ok((sender, m)) => {
                        ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_message(sender, m))
                    }
                    ::std::result::Result::Err(e) => t::MessageVerdict::Reject(e.to_string()),
                };
                ::edgesync_plugin::__rt::message_action(verdict)
            }
            fn on_batch(sender: t::ConnRef, batch: t::Batch) -> ::std::vec::Vec<t::BatchVerdict> {
                ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_batch(sender.as_sender(), &batch))
                    .into_inner()
            }
        },
        "storage-hooks" => quote! {
            fn on_write(sender: t::ConnRef, msg: t::Message) -> t::WriteVerdict {
                ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_write(sender.as_sender(), msg.as_ref()))
            }
        },
        _ => quote! {
            fn on_timer(name: ::std::string::String) {
                ::edgesync_plugin::__rt::with::<P, _>(|p| p.on_timer(&name))
            }
        },
    };
    quote! {
        impl exports::edgesync::plugin::#module::Guest for Exports {
            #body
        }
    }
}
