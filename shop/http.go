package shop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
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

// HeaderIdempotentReplayed is set to "true" on a response replayed from an
// Idempotency-Key instead of produced by this request (as Stripe does).
const HeaderIdempotentReplayed = "Idempotent-Replayed"

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
// POST /orders repeated with an Idempotency-Key already used for the same
// order answers the first response again (201, the same order) with the
// header Idempotent-Replayed: true, and places nothing.
//
// Errors are JSON {"error": "…"}: bad JSON 400 (a value of the wrong type
// names its field and what is expected: "lines[0].quantity: expected an
// integer, got a string"; never a Go type), a body over MaxBodyBytes 413, an
// invalid order 422, an unknown order 404, a forbidden transition 409,
// database trouble 503 with Retry-After (a commit whose outcome is unknown
// says to retry with the same Idempotency-Key); never a stack trace.
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
		writeJSON(w, err.status, errorBody{err.msg})
		return
	}
	o, replayed, err := h.svc.place(h.ctx(r), cmd, key)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", fmt.Sprintf("/orders/%d", o.ID))
	if replayed {
		w.Header().Set(HeaderIdempotentReplayed, "true")
	}
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

// bodyError is a request body refused: its status (400, or 413 for a
// body over MaxBodyBytes) and message.
type bodyError struct {
	status int
	msg    string
}

func badBody(format string, args ...any) *bodyError {
	return &bodyError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// decode reads one JSON object with known fields only. Its messages name
// the JSON (fields, types as JSON calls them), never the Go types behind.
func decode(w http.ResponseWriter, r *http.Request, v any) *bodyError {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &bodyError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes)}
		}
		return badBody("reading the request body: %s", truncate(err.Error(), 200))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var (
			te *json.UnmarshalTypeError
			se *json.SyntaxError
		)
		switch {
		case errors.Is(err, io.EOF):
			return badBody("empty request body: want a JSON object")
		case errors.As(err, &te):
			return badBody("bad JSON: %s", typeMismatch(body, te))
		case errors.As(err, &se):
			return badBody("bad JSON at byte %d: %s", se.Offset, truncate(se.Error(), 200))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return badBody("bad JSON: %s; accepted fields: %s", truncate(strings.TrimPrefix(err.Error(), "json: "), 120), acceptedFields)
		}
		return badBody("bad JSON: %s", truncate(strings.TrimPrefix(err.Error(), "json: "), 200))
	}
	// Nothing but blanks may follow the object. dec.More alone is not
	// enough: it reports false for a trailing ']' or '}'.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badBody("bad JSON: more than one value in the body")
	}
	return nil
}

// acceptedFields lists PlaceOrder's fields for the unknown-field error.
const acceptedFields = "customer, lines (each: sku, quantity, unit_price_cents)"

// typeMismatch describes a JSON value of the wrong type by its place in
// the body (lines[0].quantity) and what is expected there.
func typeMismatch(body []byte, te *json.UnmarshalTypeError) string {
	path := jsonPath(body, te.Offset)
	if path == "" {
		path = "the body"
	}
	want := expected(te.Type)
	got, number := strings.CutPrefix(te.Value, "number ")
	switch {
	case number && want == "an integer" && !strings.ContainsAny(got, ".eE"):
		// An integer, but too large for the field.
		want = fmt.Sprintf("an integer from %d to %d", int64(-1)<<(te.Type.Bits()-1), int64(1)<<(te.Type.Bits()-1)-1)
		got = truncate(got, 40)
	case number:
		got = truncate(got, 40)
	default:
		got = map[string]string{"string": "a string", "number": "a number", "bool": "true or false", "array": "an array",
			"object": "an object"}[te.Value]
		if got == "" {
			got = truncate(te.Value, 40)
		}
	}
	return fmt.Sprintf("%s: expected %s, got %s", path, want, got)
}

// expected names what a Go type accepts, in JSON's words.
func expected(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "an object"
}

// jsonPath returns the path (lines[0].quantity) of the value that ends at
// offset in body, as encoding/json reports it in an UnmarshalTypeError: the
// error itself names the field without the array indices.
func jsonPath(body []byte, offset int64) string {
	type frame struct {
		array   bool
		index   int
		key     string
		wantKey bool
	}
	var stack []frame
	path := func() string {
		var b strings.Builder
		for _, f := range stack {
			switch {
			case f.array:
				fmt.Fprintf(&b, "[%d]", f.index)
			case b.Len() == 0:
				b.WriteString(f.key)
			default:
				b.WriteString("." + f.key)
			}
		}
		return b.String()
	}
	done := func() { // a value of the innermost container ended
		if n := len(stack); n > 0 {
			if stack[n-1].array {
				stack[n-1].index++
			} else {
				stack[n-1].wantKey = true
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return path()
		}
		n := len(stack)
		if n > 0 && !stack[n-1].array && stack[n-1].wantKey {
			if key, ok := tok.(string); ok {
				stack[n-1].key, stack[n-1].wantKey = key, false
				continue
			}
			stack = stack[:n-1] // '}'
			done()
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if dec.InputOffset() >= offset {
				return path()
			}
			stack = append(stack, frame{array: tok == json.Delim('['), wantKey: tok == json.Delim('{')})
		case json.Delim(']'), json.Delim('}'):
			stack = stack[:n-1]
			done()
		default:
			if dec.InputOffset() >= offset {
				return path()
			}
			done()
		}
	}
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
