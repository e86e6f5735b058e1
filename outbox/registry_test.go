package outbox_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/bento-go/bento/outbox"
)

type itemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

func (itemAdded) EventType() string { return "ItemAdded" }

type itemRemoved struct {
	SKU string `json:"sku"`
}

func (itemRemoved) EventType() string { return "ItemRemoved" }

// checkedOut has a pointer receiver: only *checkedOut is an Event.
type checkedOut struct {
	Total int64 `json:"total"`
}

func (*checkedOut) EventType() string { return "CheckedOut" }

func TestRegistryRoundTrip(t *testing.T) {
	r := outbox.NewRegistry(itemAdded{}, &itemRemoved{})
	r.Register(&checkedOut{})
	if got, want := r.Types(), []string{"CheckedOut", "ItemAdded", "ItemRemoved"}; !slices.Equal(got, want) {
		t.Fatalf("Types() = %v, want %v", got, want)
	}
	for _, ev := range []outbox.Event{
		itemAdded{SKU: "SKU-1", Quantity: 2},
		itemRemoved{SKU: "SKU-2"}, // registered by pointer, decoded as a value
		&checkedOut{Total: 2500},  // only the pointer is an Event
	} {
		payload, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Decode(ev.EventType(), payload)
		if err != nil {
			t.Fatalf("Decode(%s, %s): %v", ev.EventType(), payload, err)
		}
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("Decode(%s) = %#v, want %#v", ev.EventType(), got, ev)
		}
	}
}

func TestRegistryErrors(t *testing.T) {
	r := outbox.NewRegistry(itemAdded{}, itemRemoved{})
	_, err := r.Decode("OrderShipped", []byte(`{}`))
	if err == nil {
		t.Fatal("Decode of an unregistered type succeeded")
	}
	for _, want := range []string{`"OrderShipped"`, "ItemAdded", "ItemRemoved"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s (the unknown type and every registered one)", err, want)
		}
	}
	if _, err := r.Decode("ItemAdded", []byte(`{"quantity": "two"}`)); err == nil || !strings.Contains(err.Error(), "ItemAdded") {
		t.Errorf("Decode of a bad payload returned %v, want an error naming the type", err)
	}
	// Registering a type again replaces it.
	r.Register(itemAdded{})
	if got := r.Types(); len(got) != 2 {
		t.Errorf("Types() after registering twice = %v", got)
	}
}
