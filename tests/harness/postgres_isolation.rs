//! Every test gets a database of its own on a real PostgreSQL server.

use testkit::postgres;

use crate::helpers::{fresh_database, within, MINUTES_2};

#[tokio::test]
async fn sql_runs_against_a_fresh_database() {
    within(MINUTES_2, async {
        let db = fresh_database().await;
        sqlx::query("CREATE TABLE notes (id BIGINT PRIMARY KEY, amount NUMERIC(12, 2) NOT NULL)")
            .execute(db.pool())
            .await
            .expect("create table");
        sqlx::query("INSERT INTO notes VALUES ($1, $2::numeric)")
            .bind(1_i64)
            .bind("222.22")
            .execute(db.pool())
            .await
            .expect("insert");

        let amount: String = sqlx::query_scalar("SELECT amount::text FROM notes WHERE id = $1")
            .bind(1_i64)
            .fetch_one(db.pool())
            .await
            .expect("select");
        assert_eq!(amount, "222.22");

        let current: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(db.pool())
            .await
            .expect("current database");
        assert_eq!(current, db.name);
    })
    .await;
}

#[tokio::test]
async fn tests_running_in_parallel_do_not_see_each_others_rows() {
    within(MINUTES_2, async {
        let server = postgres::server().await.expect("postgres");
        let workers = (0..8).map(|worker: i64| async move {
            let db = server.fresh_database().await.expect("db");
            sqlx::query("CREATE TABLE seen (worker BIGINT NOT NULL)")
                .execute(db.pool())
                .await
                .expect("create table");
            for _ in 0..5 {
                sqlx::query("INSERT INTO seen VALUES ($1)")
                    .bind(worker)
                    .execute(db.pool())
                    .await
                    .expect("insert");
                tokio::task::yield_now().await;
            }
            let rows: Vec<i64> = sqlx::query_scalar("SELECT worker FROM seen")
                .fetch_all(db.pool())
                .await
                .expect("select");
            (worker, db.name.clone(), rows)
        });
        let results = futures::future::join_all(workers).await;

        let mut names: Vec<&String> = results.iter().map(|(_, name, _)| name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8, "each worker has its own database");
        for (worker, _, rows) in &results {
            assert_eq!(
                rows,
                &vec![*worker; 5],
                "worker {worker} sees only its own rows"
            );
        }
    })
    .await;
}
