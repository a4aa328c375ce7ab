//! Signals, for every front end: the first SIGINT/SIGTERM (a Concourse abort) cancels the
//! run, which then finishes its owed unlocks and cleanup; a second one exits at once.

use crate::events::Event;
use crate::orchestrate::Ctx;

/// First SIGINT/SIGTERM: stop new work, finish owed unlocks and cleanup. Second: exit now.
pub fn install_signal_handlers(ctx: &Ctx) {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = ctx.cancel.clone();
    let events = ctx.events.clone();
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        events.emit(Event::Warning("could not install signal handlers".into()));
        return;
    };
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        events.emit(Event::Cancelling);
        cancel.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("Second signal: exiting now. Run backup-cleanup or restore-cleanup to unlock and clean up.");
        std::process::exit(130);
    });
}

