//! The HTTP ceiling of the machine: an actix-web server that reads the body and answers 200.
//! The load tool measures it beside the engine, so engine figures are ratios to it.
use actix_web::{App, HttpResponse, HttpServer, web};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .skip_while(|a| a != "--bind")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let workers: usize = std::env::args()
        .skip_while(|a| a != "--workers")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    HttpServer::new(|| {
        App::new().default_service(web::to(|body: web::Bytes| async move {
            std::hint::black_box(body.len());
            HttpResponse::Ok().finish()
        }))
    })
    .workers(workers)
    .bind(bind)?
    .run()
    .await
}
