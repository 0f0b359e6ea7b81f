package task

import (
	"context"
	"encoding/json"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
)

const (
	// EventJobFinished, on TopicJobs, says a job ended, completed or failed (Data: JobFinishedData). Notification
	// rules choose it as "job.finished".
	EventJobFinished = "job.finished"
	// TopicJobs carries the end of every job.
	TopicJobs = "jobs"
)

// JobFinishedData is the data of EventJobFinished.
type JobFinishedData struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	VMID   string `json:"vm_id,omitempty"`
}

// AnnounceJobFinished publishes the end of job on TopicJobs (best effort: the job's row is the record; a lost
// announcement costs its notification, as for the other bus events).
func AnnounceJobFinished(ctx context.Context, bus events.Bus, job *model.Job) error {
	if bus == nil {
		return nil
	}
	data, err := json.Marshal(JobFinishedData{Status: string(job.Status), Error: job.Error, VMID: job.VMID})
	if err != nil {
		return err
	}
	return bus.Publish(ctx, TopicJobs, events.Event{Type: EventJobFinished, Subject: job.ID, OwnerID: job.OwnerID,
		Data: data, Time: time.Now().UTC()})
}
