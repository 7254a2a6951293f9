//! Who is asking: the subject of a check (D9).

/// The enterprise member context of a request (enterprise family, F20).
///
/// Every field that is set selects the rules of its scope: a
/// `coze_user_id` rule for that user, a `coze_role` rule for that role, and so on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Member<'a> {
    /// The Coze user id.
    pub coze_user_id: Option<&'a str>,
    /// The role: `EnterpriseGuest`, `EnterpriseMember` or `EnterpriseAdmin`.
    pub coze_role: Option<&'a str>,
    /// The workspace the request runs in.
    pub workspace_id: Option<&'a str>,
    /// The organization the member belongs to.
    pub organization_id: Option<&'a str>,
}

impl<'a> Member<'a> {
    /// A member known by their Coze user id.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Member, Subject};
    /// let s = Subject::member(Member::user("u-9").in_workspace("ws-1").in_organization("org-1"));
    /// let m = s.member.unwrap();
    /// assert_eq!((m.coze_user_id, m.workspace_id, m.organization_id), (Some("u-9"), Some("ws-1"), Some("org-1")));
    /// ```
    pub const fn user(coze_user_id: &'a str) -> Self {
        Member {
            coze_user_id: Some(coze_user_id),
            coze_role: None,
            workspace_id: None,
            organization_id: None,
        }
    }

    /// This member context with the role (`EnterpriseGuest`,
    /// `EnterpriseMember` or `EnterpriseAdmin`).
    pub const fn with_role(mut self, role: &'a str) -> Self {
        self.coze_role = Some(role);
        self
    }

    /// This member context in a workspace.
    pub const fn in_workspace(mut self, workspace_id: &'a str) -> Self {
        self.workspace_id = Some(workspace_id);
        self
    }

    /// This member context in an organization.
    pub const fn in_organization(mut self, organization_id: &'a str) -> Self {
        self.organization_id = Some(organization_id);
        self
    }
}

/// A request's subject: optional device, optional custom consumer, optional
/// member context (D9). Each family it carries is resolved independently and
/// every resolved rule must pass.
///
/// Borrowed, so building one per request allocates nothing.
///
/// # Examples
/// ```
/// use benefit_quota::{Member, Subject};
/// let s = Subject::device("dev-1").with_member(Member::user("u-9"));
/// assert_eq!(s.device_id, Some("dev-1"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Subject<'a> {
    /// The device (device family).
    pub device_id: Option<&'a str>,
    /// The custom consumer (custom-consumer family).
    pub custom_consumer_id: Option<&'a str>,
    /// The enterprise member context (enterprise family).
    pub member: Option<Member<'a>>,
}

impl<'a> Subject<'a> {
    /// A subject that is only a device.
    pub const fn device(id: &'a str) -> Self {
        Subject {
            device_id: Some(id),
            custom_consumer_id: None,
            member: None,
        }
    }

    /// A subject that is only a custom consumer.
    pub const fn consumer(id: &'a str) -> Self {
        Subject {
            device_id: None,
            custom_consumer_id: Some(id),
            member: None,
        }
    }

    /// A subject that is only an enterprise member.
    pub const fn member(m: Member<'a>) -> Self {
        Subject {
            device_id: None,
            custom_consumer_id: None,
            member: Some(m),
        }
    }

    /// The subject's only entity when it is only a device or only a
    /// consumer.
    #[inline(always)]
    pub(crate) fn sole_entity(&self) -> Option<(crate::state::OwnerKind, &'a str)> {
        use crate::state::OwnerKind;
        match (self.device_id, self.custom_consumer_id, &self.member) {
            (Some(d), None, None) => Some((OwnerKind::Device, d)),
            (None, Some(c), None) => Some((OwnerKind::Consumer, c)),
            _ => None,
        }
    }

    /// Adds or replaces the device.
    pub const fn with_device(mut self, id: &'a str) -> Self {
        self.device_id = Some(id);
        self
    }

    /// Adds or replaces the custom consumer.
    pub const fn with_consumer(mut self, id: &'a str) -> Self {
        self.custom_consumer_id = Some(id);
        self
    }

    /// Adds or replaces the member context.
    pub const fn with_member(mut self, m: Member<'a>) -> Self {
        self.member = Some(m);
        self
    }
}

/// Asks the CPU for the bytes of the subject's ids (batches do it for a whole
/// chunk before hashing any of them).
#[inline]
pub(crate) fn prefetch_ids(s: Subject<'_>) {
    let ask = |id: Option<&str>| {
        if let Some(id) = id {
            crate::prefetch::range(id.as_ptr(), id.len());
        }
    };
    ask(s.device_id);
    ask(s.custom_consumer_id);
    if let Some(m) = s.member {
        ask(m.coze_user_id);
        ask(m.coze_role);
        ask(m.workspace_id);
        ask(m.organization_id);
    }
}
