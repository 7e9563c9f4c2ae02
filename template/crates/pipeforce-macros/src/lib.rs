//! `#[service]` and `#[event]`: map async methods of a service type to routing-key patterns.
//!
//! ```ignore
//! #[service]
//! impl HelloService {
//!     #[event("pipeforce.webhook.foo.*")]
//!     async fn webhook(&self, body: String, ctx: &Context) -> Result<(), HandlerError> { ... }
//! }
//! ```
//!
//! `#[service]` reads the `#[event]` methods of the `impl` block and implements
//! `pipeforce::messaging::Service` for the type, one `Handler` per method. `#[event]` itself
//! only checks its patterns, so that a malformed one is a compile error pointing at it.
//!
//! A handler method is `async`, takes `&self`, and then optionally the body (any owned type)
//! and optionally the context (a reference, `&Context`), in that order. It returns nothing or
//! a `Result` whose `Ok` value, unless `()`, is the JSON reply to a request.
//!
//! Options follow the patterns: `publish = "key"` (publish the `Ok` value), `retries = N`,
//! `timeout_secs = N`, `broadcast` and `concurrency = N`. One that makes no sense for the
//! method, an unknown one, or a malformed value is a compile error naming the option.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{ToTokens, quote, quote_spanned};
use syn::{
    Attribute, Expr, ExprLit, FnArg, ImplItem, ImplItemFn, ItemImpl, Lit, Pat, ReturnType,
    Signature, Token, Type, parse::Parser, punctuated::Punctuated, spanned::Spanned,
};

// The runtime's pattern rules, compiled in here so both sides agree on what is valid.
#[path = "../../pipeforce/src/messaging/pattern.rs"]
#[allow(dead_code)]
mod pattern;

/// Marks an `impl` block whose `#[event]` methods handle messages.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = TokenStream2::from(args);
    let result = if args.is_empty() {
        syn::parse::<ItemImpl>(item).and_then(|item| expand_service(&item))
    } else {
        Err(syn::Error::new(
            args.span(),
            "#[service] takes no arguments",
        ))
    };
    result.unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Binds a method of a `#[service]` impl block to one or more routing-key patterns:
/// `#[event("orders.created", "orders.updated.#")]`.
///
/// `*` matches exactly one word, `#` zero or more words. A malformed pattern is a compile
/// error that names the pattern and the rule it breaks. A pattern may also be a `&str`
/// constant (`#[event(ORDER_CREATED)]`), to write a routing key once for handling and
/// publishing; a malformed constant stops the service when it registers, naming the handler.
///
/// Options follow the patterns:
/// - `publish = "invoices.requested"`: publish the handler's `Ok` value with that key before
///   the message is acked; a failed publish fails the handler;
/// - `retries = 5`, `timeout_secs = 30`: this handler's retries and time limit;
/// - `broadcast`: every running replica gets each message;
/// - `concurrency = 1`: at most that many runs of this handler at once per replica.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse_event_args(args.into()) {
        Ok(_) => item,
        Err(error) => {
            let mut tokens = error.into_compile_error();
            tokens.extend(TokenStream2::from(item));
            tokens.into()
        }
    }
}

/// What an `#[event(...)]` says: its patterns, then its options.
struct EventArgs {
    patterns: Vec<Expr>,
    options: EventOptions,
}

/// The options of an `#[event(...)]` beside its patterns, each checked on its own here; the
/// ones that depend on the method's signature are checked by `#[service]`.
#[derive(Default)]
struct EventOptions {
    /// `publish = "key"` (or a `&str` constant): the option's span and the key.
    publish: Option<(Span, Expr)>,
    retries: Option<u32>,
    timeout_secs: Option<u64>,
    broadcast: bool,
    concurrency: Option<usize>,
}

/// The option names `#[event]` knows, for the error about one it does not.
const OPTIONS: &str =
    "publish = \"key\", retries = N, timeout_secs = N, broadcast, concurrency = N";

/// The patterns and options of an `#[event(...)]`: patterns are string literals, each checked
/// here, or paths of `&str` constants (`#[event(ORDER_CREATED)]`, so a key is written once
/// for handling and publishing), which `Handler::new` checks when the service is registered.
/// Options are `name = value` or a bare lower-case name (`broadcast`).
fn parse_event_args(args: TokenStream2) -> syn::Result<EventArgs> {
    let arguments = Punctuated::<Expr, Token![,]>::parse_terminated.parse2(args.clone())?;
    let mut patterns = Vec::new();
    let mut options = EventOptions::default();
    for argument in arguments {
        match option_name(&argument) {
            Some(name) => options.set(&name, &argument)?,
            None => patterns.push(argument),
        }
    }
    if patterns.is_empty() {
        return Err(syn::Error::new(
            if args.is_empty() {
                Span::call_site()
            } else {
                args.span()
            },
            "#[event] needs at least one routing-key pattern, e.g. #[event(\"orders.*\")]",
        ));
    }
    check_patterns(&patterns)?;
    Ok(EventArgs { patterns, options })
}

/// The option an argument sets, if it is one: `name = value`, or a bare lower-case name
/// (constants of patterns are upper-case).
fn option_name(argument: &Expr) -> Option<String> {
    let path = match argument {
        Expr::Assign(assign) => match &*assign.left {
            Expr::Path(path) => path,
            _ => return Some(assign.left.to_token_stream().to_string()),
        },
        Expr::Path(path) => path,
        _ => return None,
    };
    let name = path.path.get_ident()?.to_string();
    let is_option = matches!(argument, Expr::Assign(_)) || name.chars().all(|c| !c.is_uppercase());
    is_option.then_some(name)
}

impl EventOptions {
    /// Sets the option `name` from `argument`, or says why it cannot be set.
    fn set(&mut self, name: &str, argument: &Expr) -> syn::Result<()> {
        let value = match argument {
            Expr::Assign(assign) => Some(&*assign.right),
            _ => None,
        };
        let twice = || syn::Error::new(argument.span(), format!("`{name}` is given twice"));
        match (name, value) {
            ("publish", Some(key)) => {
                check_publish_key(key)?;
                if self.publish.is_some() {
                    return Err(twice());
                }
                self.publish = Some((argument.span(), key.clone()));
            }
            ("retries", Some(value)) => {
                let retries = integer(
                    name,
                    value,
                    "a number of retries, e.g. `retries = 5` (0 dead-letters on the first failure)",
                )?;
                if self.retries.replace(retries).is_some() {
                    return Err(twice());
                }
            }
            ("timeout_secs", Some(value)) => {
                let seconds: u64 = integer(name, value, "seconds, e.g. `timeout_secs = 30`")?;
                if seconds == 0 {
                    return Err(syn::Error::new(
                        value.span(),
                        "`timeout_secs` must be at least 1: a handler cannot finish in 0 s",
                    ));
                }
                if self.timeout_secs.replace(seconds).is_some() {
                    return Err(twice());
                }
            }
            ("concurrency", Some(value)) => {
                let limit: usize =
                    integer(name, value, "how many runs at once, e.g. `concurrency = 1`")?;
                if limit == 0 {
                    return Err(syn::Error::new(
                        value.span(),
                        "`concurrency` must be at least 1: with 0 the handler would never run",
                    ));
                }
                if self.concurrency.replace(limit).is_some() {
                    return Err(twice());
                }
            }
            ("broadcast", None) => {
                if std::mem::replace(&mut self.broadcast, true) {
                    return Err(twice());
                }
            }
            ("broadcast", Some(_)) => {
                return Err(syn::Error::new(
                    argument.span(),
                    "`broadcast` takes no value: write `#[event(\"config.changed\", broadcast)]`",
                ));
            }
            ("publish" | "retries" | "timeout_secs" | "concurrency", None) => {
                return Err(syn::Error::new(
                    argument.span(),
                    format!("`{name}` needs a value, e.g. `{name} = ...`"),
                ));
            }
            _ => {
                return Err(syn::Error::new(
                    argument.span(),
                    format!("unknown #[event] option `{name}`; the options are: {OPTIONS}"),
                ));
            }
        }
        Ok(())
    }
}

/// The integer literal of option `name`, in the range of `N`.
fn integer<N>(name: &str, value: &Expr, what: &str) -> syn::Result<N>
where
    N: std::str::FromStr,
    N::Err: std::fmt::Display,
{
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(literal),
            ..
        }) => literal
            .base10_parse()
            .map_err(|error| syn::Error::new(literal.span(), format!("`{name}`: {error}"))),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{name}` takes an integer literal: {what}"),
        )),
    }
}

/// A publish key is a string literal, checked here as a routing key (a valid pattern without
/// wildcards), or the path of a `&str` constant, which `Handler::with_publish` checks.
fn check_publish_key(key: &Expr) -> syn::Result<()> {
    match key {
        Expr::Lit(ExprLit {
            lit: Lit::Str(literal),
            ..
        }) => {
            let text = literal.value();
            let error = match pattern::Pattern::parse(&text) {
                Err(error) => error.to_string(),
                Ok(_) if text.split('.').any(|word| word == "*" || word == "#") => {
                    "a routing key to publish with has no `*` or `#` wildcards".to_owned()
                }
                Ok(_) => return Ok(()),
            };
            Err(syn::Error::new(
                literal.span(),
                format!("`publish`: invalid routing key {text:?}: {error}"),
            ))
        }
        Expr::Path(_) => Ok(()),
        other => Err(syn::Error::new(
            other.span(),
            "`publish` takes a routing key: a string literal or the path of a `&str` constant",
        )),
    }
}

/// Checks each pattern that is a literal; constants are checked when the service registers.
fn check_patterns(patterns: &[Expr]) -> syn::Result<()> {
    for pattern in patterns {
        match pattern {
            Expr::Lit(ExprLit {
                lit: Lit::Str(literal),
                ..
            }) => {
                let text = literal.value();
                if let Err(error) = pattern::Pattern::parse(&text) {
                    return Err(syn::Error::new(
                        literal.span(),
                        format!("invalid routing-key pattern {text:?}: {error}"),
                    ));
                }
            }
            Expr::Path(_) => {}
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a routing-key pattern is a string literal or the path of a `&str` constant",
                ));
            }
        }
    }
    Ok(())
}

fn is_event(attribute: &Attribute) -> bool {
    attribute
        .path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "event")
}

fn expand_service(item: &ItemImpl) -> syn::Result<TokenStream2> {
    if let Some((_, path, _)) = &item.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[service] goes on an inherent impl block (`impl MyService { ... }`), not on a trait impl",
        ));
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "#[service] does not support generic impl blocks",
        ));
    }
    let self_ty = &item.self_ty;
    let type_name = type_name(self_ty);

    let mut handlers = Vec::new();
    let mut errors = Vec::new();
    for impl_item in &item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let Some(attribute) = method.attrs.iter().find(|a| is_event(a)) else {
            continue;
        };
        let arguments = match &attribute.meta {
            syn::Meta::List(list) => {
                // #[event] reports its own pattern and option errors; skip the method here then.
                let Ok(arguments) = parse_event_args(list.tokens.clone()) else {
                    continue;
                };
                arguments
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "#[event] needs at least one routing-key pattern, e.g. #[event(\"orders.*\")]",
                ));
            }
        };
        match expand_handler(&type_name, method, &arguments) {
            Ok(handler) => handlers.push(handler),
            Err(error) => errors.push(error.into_compile_error()),
        }
    }
    if !errors.is_empty() {
        // The impl block stays, so that the errors of its other `#[event]`s show too.
        return Ok(quote! {
            #item
            #(#errors)*
        });
    }

    let (impl_generics, type_generics, where_clause) = item.generics.split_for_impl();
    Ok(quote! {
        #item

        impl #impl_generics ::pipeforce::messaging::Service for #self_ty #type_generics #where_clause {
            fn handlers(
                self: ::std::sync::Arc<Self>,
            ) -> ::std::vec::Vec<::pipeforce::messaging::Handler> {
                ::std::vec![#(#handlers),*]
            }
        }
    })
}

/// `HelloService` for `HelloService`, `crate::x::HelloService`, or a type that is not a path.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .map(|segment| segment.ident.to_string())
            .unwrap_or_default(),
        other => other.to_token_stream().to_string(),
    }
}

/// The parameters of a handler method after `&self`.
struct Parameters<'a> {
    body: Option<&'a Type>,
    context: Option<&'a Type>,
}

fn parameters(method: &ImplItemFn) -> syn::Result<Parameters<'_>> {
    let sig = &method.sig;
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        _ => {
            return Err(syn::Error::new(
                sig.inputs.span(),
                "an #[event] handler takes `&self` first: services are shared by concurrent handlers",
            ));
        }
    }
    let mut parameters = Parameters {
        body: None,
        context: None,
    };
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            unreachable!("only the first input is a receiver")
        };
        if !matches!(*typed.pat, Pat::Ident(_) | Pat::Wild(_)) {
            return Err(syn::Error::new(
                typed.pat.span(),
                "name the parameter (no patterns) in an #[event] handler",
            ));
        }
        let ty = &*typed.ty;
        if let Type::Reference(_) = ty {
            if parameters.context.is_some() {
                return Err(syn::Error::new(
                    ty.span(),
                    "an #[event] handler takes at most one context",
                ));
            }
            parameters.context = Some(ty);
        } else {
            if parameters.context.is_some() {
                return Err(syn::Error::new(
                    ty.span(),
                    "the body comes before the context: `(&self, body: T, ctx: &Context)`",
                ));
            }
            if parameters.body.is_some() {
                return Err(syn::Error::new(
                    ty.span(),
                    "an #[event] handler takes one body; use a struct for several fields",
                ));
            }
            parameters.body = Some(ty);
        }
    }
    Ok(parameters)
}

/// What `#[event]` requires of a handler's signature beyond its parameters.
fn check_signature(sig: &Signature) -> syn::Result<()> {
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "an #[event] handler must be an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "an #[event] handler cannot be generic",
        ));
    }
    Ok(())
}

/// The type a handler with `publish = ...` publishes: the `T` of the `Result<T, E>` it
/// returns, which must not be `()`.
fn published_type(sig: &Signature, publish: Span) -> syn::Result<&Type> {
    let needs = "`publish` publishes the handler's `Ok` value: the handler must return \
                 `Result<T, E>` with a serializable `T` other than `()`";
    let ReturnType::Type(_, returned) = &sig.output else {
        return Err(syn::Error::new(
            publish,
            format!("{needs}; it returns nothing"),
        ));
    };
    let ok_type = match &**returned {
        Type::Path(path) => path.path.segments.last().and_then(|segment| {
            let syn::PathArguments::AngleBracketed(arguments) = &segment.arguments else {
                return None;
            };
            match arguments.args.first() {
                Some(syn::GenericArgument::Type(ok)) if segment.ident == "Result" => Some(ok),
                _ => None,
            }
        }),
        _ => None,
    };
    match ok_type {
        Some(Type::Tuple(unit)) if unit.elems.is_empty() => Err(syn::Error::new(
            publish,
            format!("{needs}; it returns `Result<(), _>`"),
        )),
        Some(ok) => Ok(ok),
        None => Err(syn::Error::new(
            publish,
            format!("{needs}; it returns `{}`", returned.to_token_stream()),
        )),
    }
}

/// The handler future's body: calls the method with the decoded body and the context it
/// takes, publishes its `Ok` value with `publish = ...`, and encodes that value as the reply
/// when someone waits for one.
fn call_and_reply(
    sig: &Signature,
    takes_body: bool,
    takes_context: bool,
    publish: Option<&Expr>,
) -> TokenStream2 {
    let method_name = &sig.ident;
    let span = sig.ident.span();
    let mut arguments = Vec::new();
    if takes_body {
        arguments.push(quote!(body));
    }
    if takes_context {
        arguments.push(quote!(&context));
    }
    let returns_nothing = matches!(sig.output, ReturnType::Default);
    let call = quote_spanned! {span=> service.#method_name(#(#arguments),*).await };
    if returns_nothing {
        quote! {
            #call;
            ::std::result::Result::Ok(::std::option::Option::None)
        }
    } else {
        let publish = publish.map(|key| {
            quote! {
                ::pipeforce::messaging::__private::publish_result(&context, #key, &value).await?;
            }
        });
        quote! {
            let value = #call.into_handler_result()?;
            #publish
            if context.reply_to().is_none() {
                // Nobody waits for a reply: skip encoding it.
                return ::std::result::Result::Ok(::std::option::Option::None);
            }
            (&&::pipeforce::messaging::__private::Reply(&value)).encode()
        }
    }
}

fn expand_handler(
    type_name: &str,
    method: &ImplItemFn,
    arguments: &EventArgs,
) -> syn::Result<TokenStream2> {
    let EventArgs { patterns, options } = arguments;
    let sig = &method.sig;
    check_signature(sig)?;
    let Parameters { body, context } = parameters(method)?;
    let published = match &options.publish {
        Some((span, key)) => Some((key, published_type(sig, *span)?)),
        None => None,
    };
    let method_name = &sig.ident;
    let handler_name = format!("{type_name}::{method_name}");

    let decode = body.map(|ty| {
        quote_spanned! {ty.span()=>
            let body: #ty = (&&::pipeforce::messaging::__private::Decode::<#ty>::new())
                .decode(context.body())?;
        }
    });
    let run = call_and_reply(
        sig,
        body.is_some(),
        context.is_some(),
        published.map(|(key, _)| key),
    );

    let body_doc = body.map(|ty| {
        quote_spanned! {ty.span()=>
            .with_body({
                #[allow(unused_imports)]
                use ::pipeforce::messaging::__private::{
                    BodyOfJson as _, BodyOfRaw as _, BodyOfSchema as _,
                };
                (&&&::pipeforce::messaging::__private::BodyOf::<#ty>::new()).doc()
            })
        }
    });

    let with_options = handler_options(options, published);

    Ok(quote! {
        ::pipeforce::messaging::Handler::new(#handler_name, &[#(#patterns),*], {
            let service = ::std::sync::Arc::clone(&self);
            move |context: ::pipeforce::messaging::Context| {
                #[allow(unused_imports)]
                use ::pipeforce::messaging::__private::{
                    DecodeJson as _, DecodeRaw as _, IntoHandlerResult as _, ReplyJson as _,
                    ReplyNone as _,
                };
                #decode
                let service = ::std::sync::Arc::clone(&service);
                let run: ::pipeforce::messaging::HandlerFuture = ::std::boxed::Box::pin(async move {
                    #run
                });
                ::std::result::Result::Ok(run)
            }
        })
        #body_doc
        #(#with_options)*
    })
}

/// The builder calls that hand `#[event]`'s options to the `Handler`.
fn handler_options(options: &EventOptions, published: Option<(&Expr, &Type)>) -> Vec<TokenStream2> {
    let mut calls = Vec::new();
    if let Some((key, ty)) = published {
        calls.push(quote_spanned! {ty.span()=>
            .with_publish(#key, {
                #[allow(unused_imports)]
                use ::pipeforce::messaging::__private::{
                    BodyOfJson as _, BodyOfRaw as _, BodyOfSchema as _,
                };
                (&&&::pipeforce::messaging::__private::BodyOf::<#ty>::new()).doc()
            })
        });
    }
    if let Some(retries) = options.retries {
        calls.push(quote!(.with_retries(#retries)));
    }
    if let Some(seconds) = options.timeout_secs {
        calls.push(quote!(.with_timeout_secs(#seconds)));
    }
    if options.broadcast {
        calls.push(quote!(.with_broadcast()));
    }
    if let Some(limit) = options.concurrency {
        calls.push(quote!(.with_concurrency(#limit)));
    }
    calls
}
