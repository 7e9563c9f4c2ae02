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
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse_patterns(args.into()) {
        Ok(_) => item,
        Err(error) => {
            let mut tokens = error.into_compile_error();
            tokens.extend(TokenStream2::from(item));
            tokens.into()
        }
    }
}

/// The patterns of an `#[event(...)]`: string literals, each checked here, or paths of `&str`
/// constants (`#[event(ORDER_CREATED)]`, so a key is written once for handling and
/// publishing), which `Handler::new` checks when the service is registered.
fn parse_patterns(args: TokenStream2) -> syn::Result<Vec<Expr>> {
    let patterns = Punctuated::<Expr, Token![,]>::parse_terminated.parse2(args.clone())?;
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
    for pattern in &patterns {
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
    Ok(patterns.into_iter().collect())
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
    for impl_item in &item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let Some(attribute) = method.attrs.iter().find(|a| is_event(a)) else {
            continue;
        };
        let patterns = match &attribute.meta {
            syn::Meta::List(list) => {
                // #[event] reports its own pattern errors; skip the method here then.
                let Ok(patterns) = parse_patterns(list.tokens.clone()) else {
                    continue;
                };
                patterns
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "#[event] needs at least one routing-key pattern, e.g. #[event(\"orders.*\")]",
                ));
            }
        };
        handlers.push(expand_handler(&type_name, method, &patterns)?);
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

/// The handler future's body: calls the method with the decoded body and the context it
/// takes, and encodes what it returns as the reply when someone waits for one.
fn call_and_reply(sig: &Signature, takes_body: bool, takes_context: bool) -> TokenStream2 {
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
        quote! {
            let value = #call.into_handler_result()?;
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
    patterns: &[Expr],
) -> syn::Result<TokenStream2> {
    let sig = &method.sig;
    check_signature(sig)?;
    let Parameters { body, context } = parameters(method)?;
    let method_name = &sig.ident;
    let handler_name = format!("{type_name}::{method_name}");

    let decode = body.map(|ty| {
        quote_spanned! {ty.span()=>
            let body: #ty = (&&::pipeforce::messaging::__private::Decode::<#ty>::new())
                .decode(context.body())?;
        }
    });
    let run = call_and_reply(sig, body.is_some(), context.is_some());

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
    })
}
