//! `cargo run --bin deploy -- --help`: deploys this service to PIPEFORCE, or runs a job with
//! its image. The tool is the framework's (`crates/pipeforce-deploy`); this names what it
//! deploys, with the answers given when the project was generated (as in `src/lib.rs`).

fn main() -> std::process::ExitCode {
    pipeforce_deploy::main(pipeforce_deploy::Target {
        image: "{{image}}",
        service: "{{project-name}}",
        namespace: "{{namespace}}",
        http_port: {{http_port}},
    })
}
