package shop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"unicode"

	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 1 << 20

// MaxIdempotencyKey bounds the Idempotency-Key header.
const MaxIdempotencyKey = 200

// HTTPOptions configure the HTTP API.
type HTTPOptions struct {
	// Ready reports whether the service can take traffic (GET /readyz):
	// the database answers and no drain started.
	Ready func(ctx context.Context) error
	// Metrics, if set, serves GET /metrics.
	Metrics http.Handler
	// Logger gets one line per failed request (5xx).
	Logger *slog.Logger
}

// NewHandler returns the reference HTTP API:
//
//	POST /orders               place an order (honours Idempotency-Key) → 201
//	GET  /orders/{id}          an order → 200
//	POST /orders/{id}/pay      pay a pending order → 200
//	POST /orders/{id}/cancel   cancel a pending order → 200
//	GET  /customers/{email}/summary  the customer's order summary, projected by bento consume → 200 (404 before any)
//	GET  /healthz              the process is alive → 200
//	GET  /readyz               database healthy and not draining → 200, else 503
//	GET  /metrics              Prometheus metrics (when configured)
//
// Errors are JSON {"error": "…"}: bad JSON 400, an invalid order 422, an
// unknown order 404, a forbidden transition 409, database trouble 503 with
// Retry-After (a commit whose outcome is unknown says to retry with the same
// Idempotency-Key); never a stack trace.
func NewHandler(svc *Service, opts HTTPOptions) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &api{svc: svc, opts: opts}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", h.place)
	mux.HandleFunc("GET /orders/{id}", h.get)
	mux.HandleFunc("POST /orders/{id}/pay", h.pay)
	mux.HandleFunc("POST /orders/{id}/cancel", h.cancel)
	mux.HandleFunc("GET /customers/{email}/summary", h.summary) // summary.go
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", h.ready)
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	return h.recover(routeErrors(mux))
}

// routeErrors answers the mux's own errors (no route: 404, a route without
// the method: 405 with Allow) as JSON errors like every other error.
func routeErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		switch rec.status {
		case http.StatusNotFound:
			writeJSON(w, rec.status, errorBody{fmt.Sprintf("no route for %s %s", r.Method, truncate(r.URL.Path, 100))})
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", rec.header.Get("Allow"))
			writeJSON(w, rec.status, errorBody{fmt.Sprintf("method %s is not allowed on %s; allowed: %s",
				truncate(r.Method, 20), truncate(r.URL.Path, 100), rec.header.Get("Allow"))})
		default:
			mux.ServeHTTP(w, r)
		}
	})
}

// statusRecorder keeps the status and headers a handler writes and
// discards its body.
type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header { return s.header }
func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
}
func (s *statusRecorder) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(b), nil
}

type api struct {
	svc  *Service
	opts HTTPOptions
}

func (h *api) place(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if err := validKey(key); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	var cmd PlaceOrder
	if err := decode(w, r, &cmd); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	o, err := h.svc.Place(h.ctx(r), cmd, key)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", fmt.Sprintf("/orders/%d", o.ID))
	writeJSON(w, http.StatusCreated, o)
}

func (h *api) get(w http.ResponseWriter, r *http.Request) {
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	o, err := h.svc.Get(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (h *api) pay(w http.ResponseWriter, r *http.Request) {
	h.transition(w, r, h.svc.Pay)
}

func (h *api) cancel(w http.ResponseWriter, r *http.Request) {
	h.transition(w, r, h.svc.Cancel)
}

func (h *api) transition(w http.ResponseWriter, r *http.Request, do func(context.Context, int) (Order, error)) {
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	o, err := do(h.ctx(r), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (h *api) ready(w http.ResponseWriter, r *http.Request) {
	if h.opts.Ready != nil {
		if err := h.opts.Ready(r.Context()); err != nil {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// ctx returns the request's context with its correlation id for the
// events the request records.
func (h *api) ctx(r *http.Request) context.Context {
	id := r.Header.Get("X-Request-Id")
	if id == "" || len(id) > 128 {
		return r.Context()
	}
	return outbox.WithCorrelationID(r.Context(), id)
}

type errorBody struct {
	Error string `json:"error"`
}

// fail maps an error to its status; database trouble is 503 with
// Retry-After.
func (h *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ve *ValidationError
		te *TransitionError
		re *resilience.Error
	)
	switch {
	case errors.As(err, &ve):
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{"invalid order: " + ve.Error()})
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, errorBody{err.Error()})
	case errors.As(err, &te):
		writeJSON(w, http.StatusConflict, errorBody{te.Error()})
	case errors.Is(err, unitofwork.ErrIdempotencyKeyReused):
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{"Idempotency-Key was already used with a different order; use a new key for a new order"})
	case errors.Is(err, resilience.ErrCommitUnknown):
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{"the database lost the reply to the commit: the outcome is unknown; retry with the same Idempotency-Key"})
		h.opts.Logger.Warn("bento: request failed", "method", r.Method, "path", r.URL.Path, "status", 503, "error", err.Error())
	case errors.Is(err, driver.ErrDraining):
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{"the service is shutting down; retry on another instance"})
	case errors.As(err, &re), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		cat := resilience.Classify(err)
		what := cat.String()
		if code := resilience.Code(err); code != "" {
			what += " " + code
		}
		msg := "the database is unavailable (" + what + "); retry later"
		if cat == resilience.Permanent || cat == resilience.Integrity {
			msg = "the database cannot take the request (" + what + "); retrying will not help until the database is fixed"
		}
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{msg})
		h.opts.Logger.Warn("bento: request failed", "method", r.Method, "path", r.URL.Path, "status", 503,
			"category", cat.String(), "code", resilience.Code(err), "error", err.Error())
	default:
		writeJSON(w, http.StatusInternalServerError, errorBody{"internal error"})
		h.opts.Logger.Error("bento: request failed", "method", r.Method, "path", r.URL.Path, "status", 500, "error", err.Error())
	}
}

// recover turns a panic into a 500 without a stack in the response.
func (h *api) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				h.opts.Logger.Error("bento: handler panicked", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
				writeJSON(w, http.StatusInternalServerError, errorBody{"internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func orderID(w http.ResponseWriter, r *http.Request) (int, bool) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 32)
	if err != nil || id < 1 {
		writeJSON(w, http.StatusBadRequest, errorBody{fmt.Sprintf("invalid order id %q: want a positive integer", truncate(s, 40))})
		return 0, false
	}
	return int(id), true
}

// decode reads one JSON object with known fields only.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return fmt.Errorf("request body larger than %d bytes", MaxBodyBytes)
		case errors.Is(err, io.EOF):
			return errors.New("empty request body: want a JSON object")
		}
		return fmt.Errorf("bad JSON: %s", truncate(err.Error(), 200))
	}
	// Nothing but blanks may follow the object. dec.More alone is not
	// enough: it reports false for a trailing ']' or '}', and for a body
	// cut at MaxBodyBytes after the object.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body larger than %d bytes", MaxBodyBytes)
		}
		return errors.New("bad JSON: more than one value in the body")
	}
	return nil
}

func validKey(k string) error {
	if len(k) > MaxIdempotencyKey {
		return fmt.Errorf("Idempotency-Key is longer than %d bytes", MaxIdempotencyKey)
	}
	for _, r := range k {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return errors.New("Idempotency-Key must be printable ASCII")
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
