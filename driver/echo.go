package driver

import (
	"context"
	"database/sql"
	"log/slog"
	"time"
)

// Echo returns a middleware that logs every statement, its arguments, its
// duration and its error at debug level (DB_ECHO). It never logs a DSN or
// a password: it sees only statements.
func Echo(logger *slog.Logger) Middleware {
	return Middleware{
		Name: "echo",
		Statement: func(next StatementHandler) StatementHandler {
			return func(ctx context.Context, st Statement) error {
				if !logger.Enabled(ctx, slog.LevelDebug) {
					return next(ctx, st)
				}
				start := time.Now()
				err := next(ctx, st)
				attrs := []slog.Attr{
					slog.String("kind", st.Kind.String()),
					slog.String("query", st.Query),
					slog.Any("args", st.Args),
					slog.Bool("tx", st.Tx != nil),
					slog.Duration("took", time.Since(start)),
				}
				if st.Pool != nil {
					attrs = append(attrs, slog.String("pool", st.Pool.Role()))
				}
				if err != nil {
					attrs = append(attrs, slog.String("error", err.Error()))
				}
				logger.LogAttrs(ctx, slog.LevelDebug, "bento: statement", attrs...)
				return err
			}
		},
		Begin: func(next BeginHandler) BeginHandler {
			return func(ctx context.Context, opts *sql.TxOptions) (*Tx, error) {
				tx, err := next(ctx, opts)
				if logger.Enabled(ctx, slog.LevelDebug) {
					attrs := []slog.Attr{}
					if opts != nil {
						attrs = append(attrs, slog.String("isolation", opts.Isolation.String()), slog.Bool("read_only", opts.ReadOnly))
					}
					if err != nil {
						attrs = append(attrs, slog.String("error", err.Error()))
					}
					logger.LogAttrs(ctx, slog.LevelDebug, "bento: begin", attrs...)
				}
				return tx, err
			}
		},
		End: func(next EndHandler) EndHandler {
			return func(ctx context.Context, tx *Tx, commit bool) error {
				err := next(ctx, tx, commit)
				if logger.Enabled(ctx, slog.LevelDebug) {
					msg := "bento: rollback"
					if commit {
						msg = "bento: commit"
					}
					attrs := []slog.Attr{}
					if err != nil {
						attrs = append(attrs, slog.String("error", err.Error()))
					}
					logger.LogAttrs(ctx, slog.LevelDebug, msg, attrs...)
				}
				return err
			}
		},
	}
}
