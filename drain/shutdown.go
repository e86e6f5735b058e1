package drain

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Shutdown runs a service's shutdown sequence when a signal arrives, in
// order: readiness false, a pre-stop delay (Kubernetes keeps sending
// traffic until its endpoints notice), stop intake, stop workers (the relay
// finishes its batch), drain, close. A second signal, or the deadline
// passing, escalates the drain to Force.
type Shutdown struct {
	// NotReady makes readiness report false; called first.
	NotReady func()
	// PreStopDelay keeps serving this long after NotReady (0: none).
	PreStopDelay time.Duration
	// StopIntake stops taking requests (http.Server.Shutdown); its context
	// ends at the deadline.
	StopIntake func(ctx context.Context) error
	// StopWorkers stops background work such as the relay, which finishes
	// its batch.
	StopWorkers func(ctx context.Context) error
	// Drainer drains the database.
	Drainer *Drainer
	// Deadline bounds the whole sequence after the signal (pre-stop delay +
	// drain timeout + 5 s when zero); past it the drain is forced.
	Deadline time.Duration
	// Logger gets one line per phase.
	Logger *slog.Logger
}

// Wait blocks until SIGTERM or SIGINT (or ctx ends), runs the sequence and
// returns the drain's statistics. Signals handled are the ones given, or
// SIGTERM and SIGINT.
func (s *Shutdown) Wait(ctx context.Context, signals ...os.Signal) Stats {
	if len(signals) == 0 {
		signals = []os.Signal{syscall.SIGTERM, os.Interrupt}
	}
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, signals...)
	defer signal.Stop(ch)
	select {
	case sig := <-ch:
		s.logger().Info("bento: shutdown: signal received", "signal", sig.String())
	case <-ctx.Done():
		s.logger().Info("bento: shutdown: context ended")
	}
	return s.Run(ch)
}

// Run runs the sequence now. A value on escalate (a second signal) forces
// the drain.
func (s *Shutdown) Run(escalate <-chan os.Signal) Stats {
	log := s.logger()
	deadline := s.Deadline
	if deadline <= 0 {
		deadline = s.PreStopDelay + 5*time.Second
		if s.Drainer != nil {
			deadline += s.Drainer.cfg.Timeout
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	go func() {
		select {
		case sig := <-escalate:
			log.Warn("bento: shutdown: second signal; forcing the drain", "signal", sig.String())
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				log.Warn("bento: shutdown: deadline passed; forcing the drain", "deadline", deadline)
			}
		}
		if s.Drainer != nil {
			s.Drainer.Force()
		}
	}()
	if s.NotReady != nil {
		s.NotReady()
		log.Info("bento: shutdown: readiness false")
	}
	if s.PreStopDelay > 0 {
		log.Info("bento: shutdown: pre-stop delay", "delay", s.PreStopDelay)
		select {
		case <-time.After(s.PreStopDelay):
		case <-ctx.Done():
		}
	}
	// Graceful: stop intake (in-flight requests finish), stop workers,
	// then drain. Immediate and Force cut in-flight work first, so that
	// requests blocked in the database return and intake can stop.
	var drained chan Stats
	if s.Drainer != nil && s.Drainer.cfg.Mode != Graceful {
		drained = make(chan Stats, 1)
		go func() { drained <- s.Drainer.Drain(ctx) }()
	}
	if s.StopIntake != nil {
		if err := s.StopIntake(ctx); err != nil {
			log.Warn("bento: shutdown: stopping intake", "error", err.Error())
		} else {
			log.Info("bento: shutdown: intake stopped")
		}
	}
	if s.StopWorkers != nil {
		if err := s.StopWorkers(ctx); err != nil {
			log.Warn("bento: shutdown: stopping workers", "error", err.Error())
		} else {
			log.Info("bento: shutdown: workers stopped")
		}
	}
	if s.Drainer == nil {
		return Stats{}
	}
	if drained != nil {
		return <-drained
	}
	return s.Drainer.Drain(ctx)
}

func (s *Shutdown) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}
