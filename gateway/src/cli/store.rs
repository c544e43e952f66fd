//! `edgesync store check|repair`: what is damaged in a stopped gateway's store, and
//! what repair does about it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::store::{Store, StoreError, StoreOptions, Verify, salvage};

/// `edgesync store …`
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Read the journal and every record and report damage; change nothing
    /// (exit 0 clean, 1 damaged, 2 cannot check). Run it with the gateway stopped.
    Check(StoreArgs),
    /// Drop damaged journal batches (originals kept under `<data_dir>/quarantine`),
    /// rebuild damaged metadata, and put every unreadable record on the corrupt list
    /// (served as `corrupt` gaps until a peer gateway repairs it). Gateway stopped.
    Repair(StoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Data directory of the gateway.
    #[arg(long, env = "EDGESYNC_DATA_DIR", default_value = "edgesync-data")]
    pub data_dir: PathBuf,
}

pub fn run(cmd: StoreCommand) -> ExitCode {
    match cmd {
        StoreCommand::Check(a) => check(&a.data_dir),
        StoreCommand::Repair(a) => repair(&a.data_dir),
    }
}

fn describe_journal(r: &salvage::Report) {
    if r.is_clean() {
        println!("journal: clean");
        return;
    }
    let records = r.lost.iter().filter(|i| i.key.len() == 16).count();
    println!(
        "journal: {} damaged journal batch(es), {} bytes; they held {} key(s), {} of them record keys",
        r.dropped,
        r.dropped_bytes,
        r.lost.len(),
        records
    );
}

fn describe_records(v: &Verify) {
    println!(
        "records: {} verified, {} gap marker(s), {} corrupt, {} missing",
        v.records,
        v.gap_markers,
        v.corrupt.len(),
        v.missing.len()
    );
    for (kind, list) in [("corrupt", &v.corrupt), ("missing", &v.missing)] {
        for (topic, origin, seq) in list.iter().take(50) {
            println!("  {kind}: topic {topic:?} origin {origin} seq {seq}");
        }
        if list.len() > 50 {
            println!("  … and {} more {kind}", list.len() - 50);
        }
    }
}

fn open(dir: &Path, inspect: bool) -> Result<Store, StoreError> {
    let mut o = StoreOptions::new(dir);
    o.inspect = inspect;
    Store::open(o).map(|(s, _)| s)
}

fn check(dir: &Path) -> ExitCode {
    println!("store: {}", dir.join("store").display());
    let journal = match salvage::salvage(&dir.join("store"), &dir.join("quarantine"), false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read the journal: {e}");
            return ExitCode::from(2);
        }
    };
    describe_journal(&journal);
    if !journal.is_clean() {
        println!(
            "records: not checked (the storage engine does not open a damaged journal)\n\
             repair would: drop the damaged batches (originals kept under {}), list their records as corrupt, then check every record",
            dir.join("quarantine").display()
        );
        return ExitCode::from(1);
    }
    let store = match open(dir, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot open the store: {e}");
            return ExitCode::from(2);
        }
    };
    let listed = store.corrupt_records().len();
    let v = match store.verify(false) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    describe_records(&v);
    if listed > 0 {
        println!("corrupt list: {listed} record(s) waiting for a repair from a peer");
    }
    if v.is_clean() {
        println!("clean");
        ExitCode::SUCCESS
    } else {
        println!(
            "repair would: list the {} corrupt and missing record(s) as corrupt (readers get `corrupt` gaps; a peer gateway can send them again)",
            v.corrupt.len() + v.missing.len()
        );
        ExitCode::from(1)
    }
}

fn repair(dir: &Path) -> ExitCode {
    println!("store: {}", dir.join("store").display());
    match salvage::salvage(&dir.join("store"), &dir.join("quarantine"), false) {
        Ok(r) if !r.is_clean() => {
            describe_journal(&r);
            println!(
                "journal: dropping the damaged batches; originals kept under {}",
                dir.join("quarantine").display()
            );
        }
        Ok(r) => describe_journal(&r),
        Err(e) => {
            eprintln!("error: cannot read the journal: {e}");
            return ExitCode::from(2);
        }
    }
    let store = match open(dir, false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot open the store: {e}");
            return ExitCode::from(2);
        }
    };
    let v = match store.verify(true) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    describe_records(&v);
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(store.shutdown());
    println!(
        "repaired: {} record(s) on the corrupt list; the gateway starts and serves the rest",
        store.corrupt_records().len()
    );
    ExitCode::SUCCESS
}
